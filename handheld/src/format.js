// Pure helpers of the handheld page: checks of inbound messages, plain words, labels, times.
// No DOM and no network here.

export const CATEGORY = {
  wanted: { label: 'WANTED', hint: 'on the watchlist as wanted' },
  missing: { label: 'MISSING PERSON', hint: 'reported missing' },
  vulnerable: { label: 'VULNERABLE PERSON', hint: 'approach with care' },
};

/** The three buttons: what the officer presses (OUTCOME: what is then shown as decided). */
export const BUTTON = {
  confirmed: 'Confirm',
  rejected: 'Not a match',
  not_located: 'Could not locate',
};

export const OUTCOME = {
  confirmed: 'Confirmed',
  rejected: 'Not a match',
  not_located: 'Could not locate',
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const ID = /^[A-Za-z0-9_-]{1,64}$/;
const UTC = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z$/;
const B64 = /^[A-Za-z0-9+/]+={0,2}$/;
const MAX_B64 = 4 * Math.ceil(262144 / 3);

export const isId = (s) => typeof s === 'string' && ID.test(s);
const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
const isTime = (s) => typeof s === 'string' && UTC.test(s) && !Number.isNaN(Date.parse(s));
const isJpeg = (s) => typeof s === 'string' && s.length <= MAX_B64 && B64.test(s) && s.startsWith('/9j/');

/** The alert in `text` (schema version 2, with its context image; version 1 from older units,
 * without one), or null when it is not one the page can show. */
export function parseAlert(text, topicUnit) {
  let a;
  try { a = JSON.parse(text); } catch { return null; }
  if (!a || typeof a !== 'object' || Array.isArray(a)) return null;
  if (a.schema_version !== 1 && a.schema_version !== 2) return null;
  if (typeof a.event_id !== 'string' || !UUID.test(a.event_id)) return null;
  if (a.schema_version === 2 ? !isJpeg(a.context_jpeg) : a.context_jpeg !== undefined) return null;
  if (!isId(a.unit_id) || a.unit_id !== topicUnit) return null;
  if (!(a.category in CATEGORY) || typeof a.subject_id !== 'string' || !a.subject_id) return null;
  if (!isNum(a.score) || !isNum(a.threshold) || !(a.margin === null || isNum(a.margin))) return null;
  if (!isTime(a.alerted_at) || !isTime(a.first_seen)) return null;
  if (!isJpeg(a.probe_jpeg) || !isJpeg(a.reference_jpeg)) return null;
  if (a.calibrated !== undefined && a.calibrated !== null && !isCalibrated(a.calibrated)) return null;
  return a;
}

const isRate = (x) => isNum(x) && x >= 0 && x <= 1;

/** The optional `calibrated` object of an alert: what the score means, from the model's calibration. */
function isCalibrated(c) {
  return !!c && typeof c === 'object' && !Array.isArray(c) && isRate(c.fmr) && isRate(c.expected_fpir)
    && isRate(c.target_fpir) && c.target_fpir > 0 && Number.isInteger(c.watchlist_size) && c.watchlist_size >= 1
    && typeof c.supported === 'boolean' && typeof c.calibration === 'string';
}

/** "1 in 3,800" for a rate of 0.00026. */
export function oneIn(rate) {
  if (!(rate > 0)) return 'none';
  const n = 1 / rate;
  const r = n >= 100 ? Number(n.toPrecision(2)) : Math.round(n);
  return `1 in ${r.toLocaleString('en-GB')}`;
}

/** The unit's acknowledgement (schema version 1) in `text`, or null. */
export function parseAck(text, topicUnit) {
  let k;
  try { k = JSON.parse(text); } catch { return null; }
  if (!k || typeof k !== 'object' || k.schema_version !== 1) return null;
  if (!isId(k.unit_id) || k.unit_id !== topicUnit || typeof k.event_id !== 'string' || !UUID.test(k.event_id)) return null;
  if (!(k.outcome in OUTCOME) || !isId(k.officer_id) || !isTime(k.decided_at) || !isTime(k.recorded_at)) return null;
  if (typeof k.duplicate !== 'boolean') return null;
  return k;
}

/** What the score means, in plain words. The system only prompts: the officer decides. */
export function scoreWords(score, threshold, margin, calibrated, category = '') {
  // with calibrated scores 0.10 above the threshold is ten times rarer among strangers
  const above = score - threshold;
  let words;
  if (above >= 0.10) words = 'Strong possible match — verify before acting';
  else if (above >= 0.04) words = 'Possible match — verify';
  else words = 'Weak possible match — verify carefully';
  const close = margin !== null && margin < 0.03
    ? 'Another watchlist entry scored almost as high.' : '';
  if (calibrated) {
    // the alert's target is its category's (match.target_fpir_<category>)
    const what = category in CATEGORY ? `${CATEGORY[category].label.toLowerCase()} alerts` : 'alerts';
    const setting = `(${what} set for ${oneIn(calibrated.target_fpir)}; ${calibrated.watchlist_size} listed)`;
    // beyond what the calibration measured no number is given: an extrapolated one invites over-reading
    const rate = calibrated.supported
      ? `About ${oneIn(calibrated.expected_fpir)} passers-by not on the list would match this well`
      : 'Rarer among passers-by not on the list than the calibration measured: beyond the calibrated range';
    return { words, detail: `${rate} ${setting}. ${close}`.trim() };
  }
  return { words, detail: `Similarity ${score.toFixed(2)} (alert threshold ${threshold.toFixed(2)}). ${close}`.trim() };
}

/** "12 s ago", "4 min ago", "1 h 05 min ago" from milliseconds. */
export function ago(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, '0')} min ago`;
  return `${Math.floor(h / 24)} days ago`;
}

/** Local wall-clock time "14:03:27" of an ISO time. */
export function clock(iso) {
  const d = new Date(iso);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}

/** The unit id in "<prefix>/<unit>/<rest>", when the topic has that shape. */
export function topicParts(topic, prefix) {
  const parts = topic.split('/');
  if (parts[0] !== prefix || parts.length < 3 || !isId(parts[1])) return null;
  return { unit: parts[1], rest: parts.slice(2).join('/') };
}
