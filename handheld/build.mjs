// Build the handheld page into dist/: `npm ci && npm run build` (see docs/handheld.md).
// Bundles src/app.js with mqtt.js (esbuild, minified, for current phone browsers), copies the
// static files and writes the service worker with the list of files and a cache name that is
// a hash of their contents (a new build replaces the cache on the phones).
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, 'src');
const out = join(root, 'dist');
const STATIC = ['index.html', 'style.css', 'manifest.webmanifest', 'icon.svg'];

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });

await build({
  entryPoints: [join(src, 'app.js')],
  outfile: join(out, 'app.js'),
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome100', 'safari15', 'firefox100'],
  minify: true,
  legalComments: 'eof',
  logLevel: 'warning',
});
for (const f of STATIC) copyFileSync(join(src, f), join(out, f));

const files = readdirSync(out).sort();
const hash = createHash('sha256');
for (const f of files) hash.update(f).update(readFileSync(join(out, f)));
const version = hash.digest('hex').slice(0, 16);
const sw = readFileSync(join(src, 'sw.js'), 'utf8')
  .replace("'__CACHE_NAME__'", JSON.stringify(`lfr-hh-${version}`))
  .replace('__FILES__', JSON.stringify(['./', ...files]));
writeFileSync(join(out, 'sw.js'), sw);
writeFileSync(join(out, 'version.txt'), `${version}\n`);
const size = (f) => readFileSync(join(out, f)).length;
console.log(`handheld: dist/ built (${version}): ${files.map((f) => `${f} ${size(f)} B`).join(', ')}`);
