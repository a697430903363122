// What the page keeps on the phone.
//
// * decisions (localStorage): event id -> {outcome, officer_id, decided_at, unit_id, state, ack}.
//   Written BEFORE the adjudication is published, so neither a second tap nor a reload nor a
//   crash can send a second decision for the same alert. No images. Kept 7 days.
// * alerts (sessionStorage): the last alerts shown, images included, so that a reload of the
//   tab (pull to refresh) keeps the view; gone when the tab is closed. Kept 12 hours, 50 at most.
// * login (localStorage: officer id and broker address; sessionStorage: the password, so that a
//   reload reconnects; it is cleared by "Sign out" and when the tab is closed).

const DECISIONS = 'lfr-hh.decisions.v1';
const ALERTS = 'lfr-hh.alerts.v1';
const LOGIN = 'lfr-hh.login.v1';
const SECRET = 'lfr-hh.secret.v1';
const DECISION_DAYS = 7;
const ALERT_HOURS = 12;
const MAX_ALERTS = 50;

function read(storage, key, fallback) {
  try {
    const v = JSON.parse(storage.getItem(key));
    return v && typeof v === 'object' ? v : fallback;
  } catch {
    return fallback;
  }
}

function write(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // quota: the in-memory state still holds
  }
}

export function loadDecisions(now = Date.now()) {
  const all = read(localStorage, DECISIONS, {});
  const cutoff = now - DECISION_DAYS * 86400e3;
  for (const [id, d] of Object.entries(all)) if (!(Date.parse(d.decided_at) > cutoff)) delete all[id];
  return all;
}

/**
 * Save one decision before it is published. Returns 'already' when this alert was decided
 * meanwhile (in another tab: `decisions` then holds that decision and nothing may be sent),
 * 'saved', or 'unsaved' when storage refused it (private mode, quota: the page still holds it
 * in memory, and the unit records only the first decision of an alert in any case).
 */
export function saveDecision(decisions, eventId, decision) {
  const fresh = loadDecisions();
  if (fresh[eventId]) {
    decisions[eventId] = fresh[eventId];
    return 'already';
  }
  decisions[eventId] = decision;
  fresh[eventId] = decision;
  return write(localStorage, DECISIONS, fresh) ? 'saved' : 'unsaved';
}

export function storeDecisions(decisions) {
  write(localStorage, DECISIONS, { ...loadDecisions(), ...decisions });
}

export function loadAlerts(now = Date.now()) {
  const list = read(sessionStorage, ALERTS, []);
  if (!Array.isArray(list)) return [];
  return list.filter((a) => a && Date.parse(a.alerted_at) > now - ALERT_HOURS * 3600e3).slice(-MAX_ALERTS);
}

export function storeAlerts(alerts) {
  const list = alerts.slice(-MAX_ALERTS);
  while (!write(sessionStorage, ALERTS, list) && list.length) list.shift();   // quota: drop the oldest
}

export function loadLogin() {
  const login = read(localStorage, LOGIN, {});
  const secret = read(sessionStorage, SECRET, {});
  return { officer: login.officer || '', broker: login.broker || '', password: secret.password || '' };
}

export function storeLogin({ officer, broker, password }) {
  write(localStorage, LOGIN, { officer, broker });
  write(sessionStorage, SECRET, { password });
}

export function forgetSecret() {
  try { sessionStorage.removeItem(SECRET); } catch { /* nothing stored */ }
}
