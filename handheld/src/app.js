// The officers' handheld view of edge-lfr match alerts.
//
// Connects to the broker over MQTT over WebSockets with TLS (wss://) with the officer's user
// name and password, reads <prefix>/+/alert, <prefix>/+/status and <prefix>/+/adjudication/ack,
// shows each alert (probe crop beside the watchlist thumbnail, category, what the score means,
// time since seen, unit), and publishes the officer's decision (schema version 2) on
// <prefix>/<unit>/adjudication. One decision per alert: it is stored before it is sent and the
// buttons stay locked (see store.js); the unit's acknowledgement is shown when it comes.

import mqtt from 'mqtt';
import { BUTTON, CATEGORY, OUTCOME, ago, clock, parseAck, parseAlert, scoreWords, topicParts, isId } from './format.js';
import {
  forgetSecret, loadAlerts, loadDecisions, loadLogin, saveDecision, storeAlerts, storeDecisions, storeLogin,
} from './store.js';

const params = new URLSearchParams(location.search);
const PREFIX = isId(params.get('prefix')) ? params.get('prefix') : 'lfr';
// The broker: ?broker=wss://… in the address, else what the officer typed last time, else the
// WebSockets listener on the page's own host name (port 8884, deploy/mosquitto/handhelds.conf.in).
const DEFAULT_BROKER = params.get('broker') || `wss://${location.hostname}:8884/mqtt`;
const SESSION_EXPIRY_S = 86400;      // the broker keeps queued alerts for a phone away this long

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

const state = {
  client: null,
  officer: '',
  alerts: new Map(),          // event id -> alert, in arrival order
  cards: new Map(),           // event id -> card element
  decisions: loadDecisions(),
  publishedNow: new Set(),    // event ids whose decision this page instance handed to mqtt.js
  units: new Map(),           // unit id -> 'online' | 'offline'
  audio: null,
};

// --- connection -------------------------------------------------------------------------

function setConn(kind, text) {
  const c = $('conn');
  c.dataset.state = kind;
  c.textContent = text;
}

function connect({ officer, password, broker }) {
  if (state.client) state.client.end(true);
  state.officer = officer;
  $('who').textContent = officer;
  $('signout').hidden = false;
  setConn('connecting', 'Connecting…');
  const client = mqtt.connect(broker, {
    protocolVersion: 5,
    clientId: `hh-${officer}`,           // the broker uses the user name as client id anyway
    username: officer,
    password,
    clean: false,                        // a persistent session: alerts wait while the phone is away
    properties: { sessionExpiryInterval: SESSION_EXPIRY_S },
    keepalive: 20,
    reconnectPeriod: 1000,
    connectTimeout: 8000,
    resubscribe: true,
  });
  state.client = client;
  client.on('connect', () => {
    setConn('connected', 'Connected');
    client.subscribe([`${PREFIX}/+/alert`, `${PREFIX}/+/status`, `${PREFIX}/+/adjudication/ack`], { qos: 1 });
    resendUnsent();
  });
  client.on('reconnect', () => setConn('reconnecting', navigator.onLine === false
    ? 'Offline — no network' : 'Reconnecting…'));
  client.on('offline', () => setConn('reconnecting', navigator.onLine === false
    ? 'Offline — no network' : 'Broker unreachable — retrying…'));
  client.on('close', () => {
    if ($('conn').dataset.state === 'connected') setConn('reconnecting', 'Connection lost — reconnecting…');
  });
  client.on('error', (err) => {
    const code = err && err.code;
    if (code === 134 || code === 135 || code === 4 || code === 5) {   // bad user name or password / not authorized
      client.end(true);
      state.client = null;
      forgetSecret();
      setConn('refused', 'Sign-in refused');
      showLogin('The broker refused this officer ID or password.');
    }
  });
  client.on('message', onMessage);
}

function onMessage(topic, payload) {
  const parts = topicParts(topic, PREFIX);
  if (!parts) return;
  const text = new TextDecoder().decode(payload);
  if (parts.rest === 'alert') {
    const a = parseAlert(text, parts.unit);
    if (a && !state.alerts.has(a.event_id)) {
      addAlert(a, true);
      storeAlerts([...state.alerts.values()]);
    }
  } else if (parts.rest === 'status') {
    state.units.set(parts.unit, text === 'online' ? 'online' : 'offline');
    renderUnits();
  } else if (parts.rest === 'adjudication/ack') {
    const k = parseAck(text, parts.unit);
    if (k) onAck(k);
  }
}

// --- alerts -----------------------------------------------------------------------------

function addAlert(a, live) {
  const receivedAt = Date.now();
  state.alerts.set(a.event_id, a);
  const card = renderCard(a);
  card.dataset.receivedAt = String(receivedAt);
  state.cards.set(a.event_id, card);
  $('alerts').prepend(card);
  $('empty').hidden = true;
  const imgs = [...card.querySelectorAll('img')];
  Promise.all(imgs.map((i) => i.decode().catch(() => null)))
    .then(() => requestAnimationFrame(() => { card.dataset.visibleAt = String(Date.now()); }));
  if (live) announce(a);
  updateCounts();
}

function figure(label, b64, alt, kind = 'shot') {
  const f = el('figure', kind);
  const img = el('img');
  img.alt = alt;
  img.src = `data:image/jpeg;base64,${b64}`;
  f.append(img, el('figcaption', '', label));
  return f;
}

function renderCard(a) {
  const cat = CATEGORY[a.category];
  const card = el('article', `alert cat-${a.category}`);
  card.dataset.eventId = a.event_id;
  card.setAttribute('aria-label', `${cat.label} alert from unit ${a.unit_id}`);

  const head = el('header', 'cat');
  head.append(el('span', 'cat-label', cat.label), el('span', 'cat-hint', cat.hint));
  // the scene around the person (other faces blurred on the unit), large; below it the face chip
  // and the watchlist image side by side, the same size
  const scene = a.context_jpeg
    ? figure('Camera view', a.context_jpeg, 'The person in the camera view (other faces blurred)', 'context')
    : null;
  const shots = el('div', 'shots');
  shots.append(figure('Face', a.probe_jpeg, 'Face seen by the camera'),
    figure('Watchlist', a.reference_jpeg, 'Watchlist reference image'));

  const s = scoreWords(a.score, a.threshold, a.margin, a.calibrated, a.category);
  const meaning = el('p', 'meaning', s.words);
  const detail = el('p', 'detail', s.detail);
  const meta = el('p', 'meta');
  const seen = el('span', 'ago');
  seen.dataset.at = a.alerted_at;
  seen.textContent = `Seen ${ago(Date.now() - Date.parse(a.alerted_at))}`;
  meta.append(seen, el('span', 'when', ` · ${clock(a.alerted_at)}`), el('br'),
    el('span', 'unit', `Unit ${a.unit_id}`), el('br'), el('span', 'subject', `Watchlist ref ${a.subject_id}`));

  const buttons = el('div', 'decide');
  for (const [outcome, label] of Object.entries(BUTTON)) {
    const b = el('button', `btn btn-${outcome}`, label);
    b.type = 'button';
    b.dataset.outcome = outcome;
    b.addEventListener('click', () => decide(a, outcome));
    buttons.append(b);
  }
  const status = el('p', 'decision');
  status.setAttribute('role', 'status');
  card.append(head, ...(scene ? [scene] : []), shots, meaning, detail, meta, buttons, status);
  paintDecision(card, a.event_id);
  return card;
}

function paintDecision(card, eventId) {
  const d = state.decisions[eventId];
  const status = card.querySelector('.decision');
  const buttons = card.querySelectorAll('.decide button');
  if (!d) {
    card.dataset.state = 'open';
    status.textContent = '';
    buttons.forEach((b) => { b.disabled = false; b.classList.remove('chosen'); });
    return;
  }
  buttons.forEach((b) => {
    b.disabled = true;
    b.classList.toggle('chosen', b.dataset.outcome === d.outcome);
  });
  if (d.state === 'recorded' && d.ack) {
    const k = d.ack;
    const same = k.officer_id === d.officer_id && k.decided_at === d.decided_at;
    card.dataset.state = same ? 'recorded' : 'decided-elsewhere';
    status.textContent = same
      ? `✔ ${OUTCOME[k.outcome]} — recorded by unit ${k.unit_id} at ${clock(k.recorded_at)}`
      : `Already decided by ${k.officer_id} at ${clock(k.decided_at)}: ${OUTCOME[k.outcome]} (recorded by unit ${k.unit_id})`;
  } else if (d.state === 'other' && d.ack) {
    card.dataset.state = 'decided-elsewhere';
    status.textContent = `Decided by ${d.ack.officer_id} at ${clock(d.ack.decided_at)}: ${OUTCOME[d.ack.outcome]} (recorded by unit ${d.ack.unit_id})`;
  } else if (d.state === 'sent') {
    card.dataset.state = 'sent';
    status.textContent = `${OUTCOME[d.outcome]} — sent, waiting for unit ${d.unit_id} to record it…`;
  } else {
    card.dataset.state = 'pending';
    status.textContent = `${OUTCOME[d.outcome]} — sending… (it goes as soon as the connection is back)`;
  }
}

// --- deciding ---------------------------------------------------------------------------

function adjudicationTopic(unit) {
  return `${PREFIX}/${unit}/adjudication`;
}

function decide(a, outcome) {
  if (state.decisions[a.event_id]) return;        // never twice: the buttons are locked as well
  const decision = {
    outcome, officer_id: state.officer, decided_at: new Date().toISOString(), unit_id: a.unit_id, state: 'pending',
  };
  const saved = saveDecision(state.decisions, a.event_id, decision);
  const card = state.cards.get(a.event_id);
  if (saved === 'already') {                      // decided in another tab meanwhile
    paintDecision(card, a.event_id);
    updateCounts();
    return;
  }
  paintDecision(card, a.event_id);
  updateCounts();
  publishDecision(a.event_id);
}

function publishDecision(eventId) {
  const d = state.decisions[eventId];
  const client = state.client;
  if (!client || !d) return;
  const msg = {
    schema_version: 2, event_id: eventId, outcome: d.outcome, officer_id: d.officer_id, decided_at: d.decided_at,
  };
  state.publishedNow.add(eventId);
  client.publish(adjudicationTopic(d.unit_id), JSON.stringify(msg), { qos: 1 }, (err) => {
    if (err) { state.publishedNow.delete(eventId); return; }
    if (d.state === 'pending') {
      d.state = 'sent';
      storeDecisions({ [eventId]: d });
      const card = state.cards.get(eventId);
      if (card) paintDecision(card, eventId);
    }
  });
}

// Decisions stored but never handed to the broker (the page was closed or reloaded before
// the broker's PUBACK): sent again, identical, when the connection is up. mqtt.js itself
// resends what it handed over in this page's lifetime. The unit records the first one only.
function resendUnsent() {
  for (const [eventId, d] of Object.entries(state.decisions)) {
    if (d.state === 'pending' && d.officer_id === state.officer && !state.publishedNow.has(eventId)) {
      publishDecision(eventId);
    }
  }
}

function onAck(k) {
  let d = state.decisions[k.event_id];
  if (!d && !state.alerts.has(k.event_id)) return;     // an alert this page never showed
  if (!d) {           // decided by another officer: lock this alert here too
    d = { outcome: k.outcome, officer_id: k.officer_id, decided_at: k.decided_at, unit_id: k.unit_id, state: 'other' };
    state.decisions[k.event_id] = d;
  } else {
    d.state = d.state === 'other' ? 'other' : 'recorded';
  }
  d.ack = k;
  storeDecisions({ [k.event_id]: d });
  const card = state.cards.get(k.event_id);
  if (card) paintDecision(card, k.event_id);
  updateCounts();
}

// --- announcing, ticking, counts --------------------------------------------------------

function beep() {
  const ctx = state.audio;
  if (!ctx) return;
  try {
    if (ctx.state === 'suspended') ctx.resume();
    const t = ctx.currentTime;
    for (const [start, freq] of [[0, 880], [0.28, 1175]]) {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = freq;
      g.gain.setValueAtTime(0.0001, t + start);
      g.gain.exponentialRampToValueAtTime(0.5, t + start + 0.02);
      g.gain.exponentialRampToValueAtTime(0.0001, t + start + 0.24);
      o.connect(g).connect(ctx.destination);
      o.start(t + start);
      o.stop(t + start + 0.25);
    }
  } catch { /* no sound on this browser */ }
}

// A new alert: vibration and a two-tone beep where the browser allows, the card flashes, and
// a banner in the header (tap: back to the top) when the officer has scrolled away from it.
function announce(a) {
  const cat = CATEGORY[a.category];
  try { if (navigator.vibrate) navigator.vibrate([300, 120, 300]); } catch { /* not allowed */ }
  beep();
  const card = state.cards.get(a.event_id);
  card.classList.add('fresh');
  setTimeout(() => card.classList.remove('fresh'), 6000);
  if (window.scrollY > 40) {
    const t = $('toast');
    t.textContent = `New alert: ${cat.label} — unit ${a.unit_id} ↑`;
    t.className = `toast cat-${a.category}`;
    t.hidden = false;
    clearTimeout(announce.timer);
    announce.timer = setTimeout(() => { t.hidden = true; }, 10000);
  }
}

function updateCounts() {
  let open = 0;
  for (const id of state.alerts.keys()) if (!state.decisions[id]) open += 1;
  $('open').textContent = open ? `${open} to decide` : '';
  document.title = open ? `(${open}) LFR alerts` : 'LFR alerts';
}

function tick() {
  const now = Date.now();
  for (const s of document.querySelectorAll('.ago')) s.textContent = `Seen ${ago(now - Date.parse(s.dataset.at))}`;
}

function renderUnits() {
  const box = $('units');
  box.replaceChildren();
  for (const [unit, st] of [...state.units].sort()) {
    box.append(el('span', `unit-pill ${st}`, `${unit} ${st === 'online' ? 'online' : 'OFFLINE'}`));
  }
}

// --- login ------------------------------------------------------------------------------

function showBroker() {
  $('brokerbox').querySelector('summary').textContent = `Broker: ${$('broker').value || '(none)'}`;
}

function showLogin(message) {
  const saved = loadLogin();
  $('login').hidden = false;
  $('signout').hidden = true;
  $('officer').value = saved.officer;
  $('broker').value = params.get('broker') || saved.broker || DEFAULT_BROKER;
  showBroker();
  $('loginmsg').textContent = message || '';
}

function unlockAudio() {
  if (state.audio) return;
  try {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (Ctx) state.audio = new Ctx();
  } catch { /* no Web Audio */ }
}

function onLogin(ev) {
  ev.preventDefault();
  unlockAudio();                        // a tap: browsers allow sound from now on
  const officer = $('officer').value.trim();
  const password = $('password').value;
  const broker = $('broker').value.trim();
  if (!isId(officer)) { $('loginmsg').textContent = 'Officer ID: letters, digits, - or _'; return; }
  if (!/^wss:\/\//.test(broker)) { $('loginmsg').textContent = 'Broker address must start with wss:// (TLS)'; return; }
  storeLogin({ officer, broker, password });
  $('password').value = '';
  $('login').hidden = true;
  $('signout').hidden = false;
  connect({ officer, password, broker });
}

// Signing out ends the broker session (nothing queues for this phone any more) and clears the
// alerts and their images from the page; the decisions (no images) stay, so that no alert can
// be decided a second time from this phone.
function signOut() {
  if (state.client) state.client.end(false, { reasonCode: 0, properties: { sessionExpiryInterval: 0 } });
  state.client = null;
  forgetSecret();
  state.alerts.clear();
  state.cards.clear();
  storeAlerts([]);
  $('alerts').replaceChildren();
  $('empty').hidden = false;
  updateCounts();
  setConn('idle', 'Signed out');
  showLogin('');
}

function start() {
  $('loginform').addEventListener('submit', onLogin);
  $('signout').addEventListener('click', signOut);
  $('broker').addEventListener('input', showBroker);
  $('toast').addEventListener('click', () => { $('toast').hidden = true; window.scrollTo({ top: 0 }); });
  window.addEventListener('scroll', () => { if (window.scrollY <= 40) $('toast').hidden = true; }, { passive: true });
  document.addEventListener('click', unlockAudio, { once: true });
  for (const a of loadAlerts()) addAlert(a, false);
  setInterval(tick, 1000);
  window.addEventListener('online', () => state.client && state.client.reconnect());
  if ('serviceWorker' in navigator && window.isSecureContext) {
    navigator.serviceWorker.register('sw.js').catch(() => { /* the page still works online */ });
  }
  const saved = loadLogin();
  const broker = params.get('broker') || saved.broker || DEFAULT_BROKER;
  if (saved.officer && saved.password && broker) {
    $('login').hidden = true;
    connect({ officer: saved.officer, password: saved.password, broker });
  } else {
    showLogin('');
  }
}

start();
