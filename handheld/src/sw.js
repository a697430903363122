// Service worker: keeps the page's own files so that it opens without a network once it has
// been loaded. The build (build.mjs) replaces the two placeholders below with the cache name
// (a hash of the files) and the list of files. MQTT traffic (WebSockets) never passes here.
const CACHE = '__CACHE_NAME__';
const FILES = __FILES__;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k.startsWith('lfr-hh-') && k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET' || new URL(req.url).origin !== self.location.origin) return;
  // The page's files: from the cache first (they change only with a new build, which brings a
  // new cache); a navigation (any path, any query) gets index.html.
  const key = req.mode === 'navigate' ? './' : req;
  event.respondWith(caches.open(CACHE)
    .then((c) => c.match(key, { ignoreSearch: true }))
    .then((hit) => hit || fetch(req)));
});
