// Talking to the AltCap server: batching, back-off, the caption cache, and asking for image
// bytes when the server cannot fetch an image itself. An ES module used by the service
// worker only (the one caller of the server). fetch, sleep and the clock are injected, so node
// tests drive every path with fakes.
//
// The worker never downloads an image. A page chooses which image addresses it shows, and
// the caption is written into that page, where its scripts read it: bytes the worker fetched
// (with the user's cookies for another site, or merely with AltCap's access to that site or
// the intranet) would let any page learn what is in images it cannot read itself. So the
// worker asks the content script for the bytes ("needs_bytes", "needs_canvas"), which reads
// them as the page itself may (same-origin, or shared through CORS), or not at all; and the
// caption cache is kept per page (top-level page and frame), so that a caption made for one
// site never reaches another.
//
// The server is whatever address the user typed: its words are capped as soon as they arrive
// (readResult(), through caption-text.js, the content script's own rule: at most
// MAX_ALT_CHARS characters, cut at a word with "…"), so that an answer of megabytes is
// neither kept in the cache nor handed to a page.

// A classic script that defines globalThis.AltCapCaptionText (the content script loads it
// too): the one place where the length of a server's words is capped.
import "./caption-text.js";

const T = globalThis.AltCapCaptionText;

export const MAX_IMAGES_PER_REQUEST = 32; // the server's ALTCAP_MAX_IMAGES_PER_REQUEST default
export const MAX_BODY_CHARS = 12 * 1024 * 1024; // request bodies stay under the 20 MiB default
export const MAX_RETRIES = 3; // retries after the first try, on 429/502/503/504 and network errors
export const MAX_RETRY_WAIT_MS = 30_000; // a longer Retry-After: give up now, pause that long
// The most of a server's answer read: 32 results with 8 candidates each and long texts stay
// under 1 MiB; beyond this the answer is dropped unread, so a server that sends gigabytes
// costs the worker no more memory than this.
export const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;
export const BACKOFF_BASE_MS = 500; // 0.5 s, 1 s, 2 s (+ up to 25% jitter)
export const REQUEST_TIMEOUT_MS = 60_000;
export const UNREACHABLE_PAUSE_MS = 15_000; // after the server could not be reached at all
export const CACHE_SIZE = 2000; // captions remembered while the service worker lives

// Server answers meaning "I read the image but cannot decode its format" (SVG markup,
// JPEG XL...): the browser, which shows it, may send a snapshot instead (allowBytes), a JPEG.
export const UNDECODABLE = new Set(["unsupported_image", "not_an_image"]);
const SNAPSHOT = /^data:image\/jpeg;base64,/i; // what a snapshot is: its answer is final

// Server answers meaning "I could not download that image" (private address, login needed,
// timeout, ...): the page, which may be able to read it, may send the bytes (allowBytes).
export const SERVER_FETCH_ERRORS = new Set([
  "fetch_failed",
  "blocked_address",
  "invalid_url",
  "fetch_timeout",
  "too_many_redirects",
]);

const RETRY_STATUSES = new Set([429, 502, 503, 504]);

export class CaptionError extends Error {
  constructor(code, message, { retryAfterMs = null } = {}) {
    super(message);
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

/** Split items into lists of at most maxCount items and (roughly) maxChars characters. */
export function chunk(items, maxCount = MAX_IMAGES_PER_REQUEST, maxChars = Infinity, sizeOf) {
  const size = sizeOf || (() => 0);
  const out = [];
  let current = [];
  let chars = 0;
  for (const item of items) {
    const n = size(item);
    if (current.length && (current.length >= maxCount || chars + n > maxChars)) {
      out.push(current);
      current = [];
      chars = 0;
    }
    current.push(item); // an item larger than maxChars travels alone
    chars += n;
  }
  if (current.length) out.push(current);
  return out;
}

/** Retry-After (seconds, or an HTTP date) -> milliseconds from now, or null. */
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined) return null;
  const text = String(value).trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return null;
  return Math.max(0, date - now);
}

/** How long to wait before retry number `attempt` (0 = the first retry). The server's
 * Retry-After wins; otherwise exponential back-off with jitter, so that many tabs do not
 * come back at the same instant. The caller gives up when this exceeds MAX_RETRY_WAIT_MS. */
export function retryDelay(attempt, retryAfter = null, { now = Date.now(), random = Math.random } = {}) {
  const told = parseRetryAfter(retryAfter, now);
  if (told !== null) return told;
  return Math.round(BACKOFF_BASE_MS * 2 ** attempt * (1 + 0.25 * random()));
}

/** Image URLs the server is unlikely to reach (and must not be made to): private addresses
 * and intranet names. With allowBytes their bytes are asked for at once (needs_bytes). */
export function isIntranetUrl(url) {
  let host;
  try {
    host = new URL(url).hostname.toLowerCase();
  } catch {
    return false;
  }
  if (!host) return false;
  if (host.startsWith("[")) return isPrivateV6(host.slice(1, -1));
  const v4 = /^(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(host); // URL() normalised other spellings
  if (v4) return isPrivateV4(v4.slice(1).map(Number));
  if (!host.replace(/\.$/, "").includes(".")) return true; // "localhost", "intranet"
  return /\.(localhost|local|internal|intranet|lan|home|corp|home\.arpa)\.?$/.test(host);
}

function isPrivateV4([a, b]) {
  return (
    a === 0 ||
    a === 10 ||
    a === 127 ||
    (a === 169 && b === 254) ||
    (a === 172 && b >= 16 && b <= 31) ||
    (a === 192 && b === 168) ||
    (a === 100 && b >= 64 && b <= 127)
  );
}

function isPrivateV6(addr) {
  if (addr === "::1" || addr === "::") return true;
  if (/^f[cd][0-9a-f]{2}:/.test(addr) || /^fe[89ab][0-9a-f]:/.test(addr)) return true;
  const mapped = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/.exec(addr);
  if (mapped) {
    const hi = parseInt(mapped[1], 16);
    return isPrivateV4([hi >> 8, hi & 255]);
  }
  return false;
}

/** "http" | "data" | "blob" | "" */
export function urlKind(url) {
  const m = /^([a-z][a-z0-9+.-]*):/i.exec(String(url || ""));
  if (!m) return "";
  const scheme = m[1].toLowerCase();
  if (scheme === "http" || scheme === "https") return "http";
  return scheme === "data" || scheme === "blob" ? scheme : "";
}

export function captionsEndpoint(serverUrl) {
  return serverUrl.replace(/\/+$/, "") + "/v1/captions";
}

function errorFromBody(body, status) {
  const e = body && typeof body === "object" && body.error && typeof body.error === "object" ? body.error : {};
  const code = typeof e.code === "string" && ERROR_CODE.test(e.code) ? e.code : `http_${status}`;
  const message = typeof e.message === "string" && e.message.trim() ? T.altText(e.message) : "";
  return { code, message: message || `the server answered HTTP ${status}` };
}

const ERROR_CODE = /^[A-Za-z][A-Za-z0-9_.-]{0,63}$/; // a server's error code, as passed on

// A BCP 47 tag as HTML's lang takes it ("en", "pt-BR"): the server's `language`.
const LANGUAGE_TAG = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$/;

/** The server's language tag in words ("English (en)"); "" for anything but a tag. */
export function languageName(tag) {
  if (typeof tag !== "string" || !LANGUAGE_TAG.test(tag)) return "";
  try {
    const name = new Intl.DisplayNames(["en"], { type: "language" }).of(tag);
    return name && name !== tag ? `${name} (${tag})` : tag;
  } catch {
    return tag; // a well-formed tag Intl does not know
  }
}

// What an alt was made of (captioner/describe.py ALT_FROM): the marks differ ("Appears to
// say: " before an image's own text, "Appears to be: " before a caption, with text or not).
export const ALT_FROM = Object.freeze(["caption", "text", "caption_and_text"]);
export const MAX_WARNINGS = 8; // codes kept from one result ("ocr_timeout"...)
// The verdicts of the server's check of an author's alt (captioner/trust.py ALT_VERDICTS).
export const ALT_VERDICTS = Object.freeze(["matches", "suspect"]);
export const MAX_AUTHOR_ALT_CHARS = 1000; // an author's alt sent for checking, at most
// code points of a server's `caption`, `alt`, `text` and error message kept: what AltCap
// writes into a page (caption-text.js MAX_ALT_CHARS, alttext.py's default)
export const MAX_SERVER_CHARS = T.MAX_ALT_CHARS;
const WARNING_CODE = /^[a-z][a-z0-9_]{0,63}$/;

/**
 * One server result -> {caption, alt, alt_from, text?, warnings?, confidence?, confident?,
 * alt_check?, cached, language?} | {error: {code, message}}.
 *
 * `caption` and `alt` go through caption-text.js altText() (no bidi controls or invisible
 * characters, at most MAX_SERVER_CHARS, cut at a word with "…"), `text` through boundText()
 * (its lines kept): a server that sends megabytes gets no further than this. A caption and
 * an alt with nothing readable left are none.
 *
 * `alt` is what to write: the server's alt when it sends one that says something (an image
 * of text: its text; a picture with text: the caption and the text), else the caption (a
 * server from before issue 22 sends no alt), and `alt_from` which of those it is
 * ("caption" when unknown). `text` (what the image says, lines joined by "\n") and
 * `warnings` are passed on when the server sent them. `language`: the answer's, for all its
 * captions (passed on when it is a valid tag).
 *
 * Trust (issue 23): `confidence` (a number in [0, 1]) and `confident` (a boolean) are passed
 * on when the server sent them as such (a model with CLIP's text tower); `confident: false`
 * makes the content script withhold an alt that rests on the caption (caption-text.js
 * withholds()). `alt_check` ({score, verdict}: the server's check of the author's alt sent
 * with the image) is passed on when its score is a number and its verdict a known one.
 */
export function readResult(r, language) {
  const said = (v) => (typeof v === "string" ? T.altText(v) : "");
  const caption = r && typeof r === "object" ? said(r.caption) : "";
  const alt = r && typeof r === "object" ? said(r.alt) : "";
  if (caption || alt) {
    const answer = alt
      ? { caption, alt, alt_from: ALT_FROM.includes(r.alt_from) ? r.alt_from : "caption" }
      : { caption, alt: caption, alt_from: "caption" };
    if (typeof r.text === "string") answer.text = T.boundText(r.text, MAX_SERVER_CHARS);
    if (Array.isArray(r.warnings)) {
      const warnings = r.warnings.filter((w) => typeof w === "string" && WARNING_CODE.test(w));
      if (warnings.length) answer.warnings = warnings.slice(0, MAX_WARNINGS);
    }
    if (typeof r.confidence === "number" && r.confidence >= 0 && r.confidence <= 1) answer.confidence = r.confidence;
    if (typeof r.confident === "boolean") answer.confident = r.confident;
    const check = r.alt_check;
    if (check && typeof check === "object" && Number.isFinite(check.score) && ALT_VERDICTS.includes(check.verdict)) {
      answer.alt_check = { score: check.score, verdict: check.verdict };
    }
    answer.cached = r.cached === true;
    if (typeof language === "string" && LANGUAGE_TAG.test(language)) answer.language = language;
    return answer;
  }
  if (r && typeof r === "object" && r.error && typeof r.error === "object") {
    return { error: errorFromBody(r, 200) };
  }
  return { error: { code: "bad_response", message: "the server sent no caption for this image" } };
}

async function fetchWithTimeout(fetchImpl, url, init, timeoutMs) {
  const controller = typeof AbortController === "function" ? new AbortController() : null;
  const timer = controller ? setTimeout(() => controller.abort(), timeoutMs) : 0;
  try {
    return await fetchImpl(url, controller ? { ...init, signal: controller.signal } : init);
  } finally {
    clearTimeout(timer);
  }
}

/** The JSON body of POST /v1/captions: `{"images": payloads}`, and `"read_text": false` when
 * the user switched "Read text in images" off (the server then reads no text: captions
 * only). Nothing is added when it is on, the server's default, so a server from before
 * `read_text` existed still understands the request. */
export function requestBody(payloads, { readText = true } = {}) {
  return JSON.stringify(readText === false ? { images: payloads, read_text: false } : { images: payloads });
}

/**
 * POST /v1/captions with up to 32 payloads ({url} or {data}, either with an author's `alt` to
 * check); returns one readResult() per payload, in order. Retries 429/502/503/504 and network
 * failures (at most maxRetries times, honouring Retry-After); throws CaptionError when the
 * whole request fails. `readText: false` asks the server to read no text (requestBody()).
 */
export async function postCaptions(payloads, { serverUrl, apiKey, readText = true }, deps = {}) {
  const fetchImpl = deps.fetch || globalThis.fetch;
  const sleep = deps.sleep || ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  const now = deps.now || Date.now;
  const random = deps.random || Math.random;
  const maxRetries = deps.maxRetries ?? MAX_RETRIES;
  const timeoutMs = deps.timeoutMs ?? REQUEST_TIMEOUT_MS;

  const headers = { "Content-Type": "application/json", Accept: "application/json" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const init = {
    method: "POST",
    headers,
    body: requestBody(payloads, { readText }),
    credentials: "omit", // the user's cookies are none of the server's business
    cache: "no-store",
    // A redirect (a 307 keeps the method and body) would send the images elsewhere, to an
    // address the user never agreed to: refused, as the message below says.
    redirect: "error",
  };

  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetchWithTimeout(fetchImpl, captionsEndpoint(serverUrl), init, timeoutMs);
    } catch (err) {
      if (err && err.name === "AbortError") {
        throw new CaptionError("server_timeout", `the AltCap server took longer than ${timeoutMs / 1000} s`);
      }
      if (attempt < maxRetries) {
        await sleep(retryDelay(attempt, null, { now: now(), random }));
        continue;
      }
      throw new CaptionError(
        "server_unreachable",
        "cannot reach the AltCap server (is it running? is the address right? AltCap does not follow redirects: give the address the server answers at)",
      );
    }

    if (RETRY_STATUSES.has(response.status)) {
      const retryAfter = response.headers && response.headers.get("Retry-After");
      const delay = retryDelay(attempt, retryAfter, { now: now(), random });
      if (attempt < maxRetries && delay <= MAX_RETRY_WAIT_MS) {
        await sleep(delay);
        continue;
      }
      const body = await readJson(response);
      const { code, message } = errorFromBody(body, response.status);
      throw new CaptionError(code, message, { retryAfterMs: delay });
    }

    const body = await readJson(response);
    if (!response.ok) {
      const { code, message } = errorFromBody(body, response.status);
      throw new CaptionError(code, message);
    }
    const results = body && Array.isArray(body.results) ? body.results : null;
    if (!results || results.length !== payloads.length) {
      throw new CaptionError("bad_response", "the AltCap server sent an answer this extension cannot read");
    }
    return results.map((r) => readResult(r, body.language));
  }
}

/**
 * A response's JSON body, read up to `maxBytes` (MAX_RESPONSE_BYTES); null when it is not
 * JSON. A larger body (by its Content-Length, or as it streams in) is not read further: the
 * stream is cancelled and CaptionError("bad_response") thrown.
 */
export async function readJson(response, maxBytes = MAX_RESPONSE_BYTES) {
  const tooLarge = () =>
    new CaptionError("bad_response", `the AltCap server sent an answer of more than ${maxBytes / 1048576} MiB`);
  const declared = Number(response.headers && response.headers.get("Content-Length"));
  const stream = response.body;
  if (declared > maxBytes) {
    if (stream) await stream.cancel().catch(() => {});
    throw tooLarge();
  }
  if (!stream || typeof stream.getReader !== "function") return response.json().catch(() => null);
  const reader = stream.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    let chunk;
    try {
      chunk = await reader.read();
    } catch {
      return null; // the connection broke off: no answer, as a body that is not JSON
    }
    if (chunk.done) break;
    size += chunk.value.byteLength;
    if (size > maxBytes) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    parts.push(chunk.value);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const part of parts) {
    bytes.set(part, at);
    at += part.byteLength;
  }
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function fail(code, message) {
  return { error: { code, message } };
}

/**
 * Captions for a content script's images, with a cache, in-flight de-duplication, chunking,
 * and the allowBytes fall-backs. describe() never throws: every image gets {id, caption,
 * alt, alt_from, text?, warnings?, cached, language?} (readResult()) or {id, error: {code,
 * message}}.
 *
 * The cache is keyed by scope (private windows apart), partition (the top-level page and the
 * frame that asked), server and image URL; a caption made from bytes is marked so, and
 * forgotten as soon as a request comes with allowBytes off.
 */
export class CaptionClient {
  constructor(deps = {}) {
    this.deps = deps; // {fetch, sleep, now, random, maxRetries, timeoutMs}
    this.now = deps.now || Date.now;
    this.cacheSize = deps.cacheSize ?? CACHE_SIZE;
    // key -> {answer, fromBytes} (insertion order = least recently used first)
    this.cache = new Map();
    this.bytesCached = false; // some entry is fromBytes
    this.inflight = new Map(); // key -> Promise<result>
    this.pausedUntil = 0;
    this.pauseError = null;
  }

  clear() {
    this.cache.clear();
  }

  /** Drop every caption that was made from image bytes. */
  forgetBytes() {
    if (!this.bytesCached) return;
    for (const [key, entry] of this.cache) if (entry.fromBytes) this.cache.delete(key);
    this.bytesCached = false;
  }

  cacheGet(key) {
    if (!key || !this.cache.has(key)) return undefined;
    const entry = this.cache.get(key);
    this.cache.delete(key); // refresh: most recently used last
    this.cache.set(key, entry);
    return entry.answer;
  }

  cacheSet(key, answer, fromBytes) {
    if (!key) return;
    this.cache.delete(key);
    this.cache.set(key, { answer, fromBytes });
    if (fromBytes) this.bytesCached = true;
    while (this.cache.size > this.cacheSize) this.cache.delete(this.cache.keys().next().value);
  }

  /** What to do with one image: {error} | {key, payload}. An image with an author's `alt`
   * (the opt-in check, settings.checkAlt) carries it in its payload, whatever the image is
   * sent as, and is cached apart from the same image without one (another answer). */
  plan(image, settings, where) {
    const { url, alt } = image;
    if (alt !== undefined && !settings.checkAlt) {
      return fail("alt_check_off", "checking authors' alt text is off in AltCap's options");
    }
    const planned = this.planImage(image, settings, where);
    if (planned.error || alt === undefined) return planned;
    const checked = String(alt).slice(0, MAX_AUTHOR_ALT_CHARS);
    const key = planned.key && url.length + checked.length <= 8192 ? `${planned.key}\nalt:${checked}` : null;
    return { key, payload: { ...planned.payload, alt: checked } };
  }

  planImage(image, settings, where) {
    const { url, data } = image;
    // Answers without the text read ("Read text in images" off) are other answers.
    const server = settings.readText === false ? `${settings.serverUrl}\nno_text` : settings.serverUrl;
    const key = url.length <= 4096 ? `${where}\n${server}\n${url}` : null;
    const kind = urlKind(url);
    const bytesOff = fail(
      "bytes_not_allowed",
      "this image is not at a public address; allow sending image bytes in AltCap's options to describe it",
    );
    if (data !== undefined) return settings.allowBytes ? { key, payload: { data } } : bytesOff;
    if (kind === "data") return settings.allowBytes ? { key, payload: { data: url } } : bytesOff;
    if (kind === "blob") {
      // The service worker cannot read a page's blob: URL; the content script will send a
      // canvas snapshot instead.
      return settings.allowBytes ? fail("needs_canvas", "send the image as data") : bytesOff;
    }
    if (kind !== "http") return fail("unsupported_url", "AltCap describes http(s), data: and blob: images only");
    if (settings.allowBytes && isIntranetUrl(url)) {
      return fail("needs_bytes", "the server cannot reach this address; send the image as the page reads it");
    }
    return { key, payload: { url } };
  }

  /** images: [{id, url, data?, alt?}]; settings: {serverUrl, apiKey, allowBytes, checkAlt,
   * readText};
   * scope separates private windows' captions, partition the pages' ("top-level origin,
   * frame origin"). */
  async describe(images, settings, { scope = "normal", partition = "" } = {}) {
    if (!settings.allowBytes) this.forgetBytes();
    const where = `${scope}\n${partition}`;
    const answers = new Map();
    const fresh = [];
    const waits = [];
    for (const image of images) {
      const plan = this.plan(image, settings, where);
      if (plan.error) {
        answers.set(image.id, plan);
        continue;
      }
      const hit = this.cacheGet(plan.key);
      if (hit !== undefined) {
        answers.set(image.id, hit);
        continue;
      }
      let promise = plan.key ? this.inflight.get(plan.key) : undefined;
      if (!promise) {
        let resolve;
        promise = new Promise((r) => (resolve = r));
        fresh.push({ plan, url: image.url, resolve });
        if (plan.key) this.inflight.set(plan.key, promise);
      }
      waits.push(promise.then((result) => answers.set(image.id, result)));
    }
    if (fresh.length) this.run(fresh, settings); // settles every fresh promise, never throws
    await Promise.all(waits);
    return images.map((image) => ({ id: image.id, ...answers.get(image.id) }));
  }

  async run(jobs, settings) {
    const results = new Map(); // job -> result
    try {
      if (this.paused() && this.pauseError) {
        for (const job of jobs) results.set(job, { error: { ...this.pauseError } });
      } else {
        await this.send(jobs, settings, results);
      }
      if (settings.allowBytes) {
        for (const job of jobs) {
          const r = results.get(job);
          const code = r && r.error && r.error.code;
          if (!code) continue;
          if (SERVER_FETCH_ERRORS.has(code) && job.plan.payload.url) {
            // The server could not download it: the page may be able to read it.
            results.set(job, fail("needs_bytes", `${r.error.message}; send the image as the page reads it`));
          } else if (UNDECODABLE.has(code) && !SNAPSHOT.test(job.plan.payload.data || "")) {
            // A format the browser shows but the server does not decode (SVG, JPEG XL...):
            // the content script sends a snapshot of it (a JPEG), whose answer is final.
            results.set(job, fail("needs_canvas", `${r.error.message}; send a snapshot`));
          }
        }
      }
    } catch (err) {
      for (const job of jobs) {
        if (!results.has(job)) results.set(job, fail("internal_error", String(err && err.message)));
      }
    }
    for (const job of jobs) {
      const result = results.get(job) || fail("internal_error", "no result");
      // A description comes from readResult(): {caption, alt, alt_from, text?, warnings?,
      // cached, language?} already, all of it kept (an alt made of the image's text is
      // written with its own mark, so a cache hit must say what it was made of).
      if (result.alt && job.plan.key) {
        this.cacheSet(job.plan.key, { ...result, cached: true }, job.plan.payload.data !== undefined);
      }
      if (job.plan.key) this.inflight.delete(job.plan.key);
      job.resolve(result);
    }
  }

  /** POST jobs' payloads in chunks; fills `results`. A server-wide failure pauses requests. */
  async send(jobs, settings, results) {
    const sizeOf = (job) => {
      const { data, url, alt } = job.plan.payload;
      return (data || url || "").length + (alt || "").length + 16;
    };
    for (const part of chunk(jobs, MAX_IMAGES_PER_REQUEST, MAX_BODY_CHARS, sizeOf)) {
      if (this.now() < this.pausedUntil && this.pauseError) {
        for (const job of part) results.set(job, { error: { ...this.pauseError } });
        continue;
      }
      try {
        const answers = await postCaptions(
          part.map((job) => job.plan.payload),
          settings,
          this.deps,
        );
        part.forEach((job, i) => results.set(job, answers[i]));
      } catch (err) {
        const error = { code: err.code || "server_error", message: err.message || String(err) };
        for (const job of part) results.set(job, { error });
        if (err.code === "server_unreachable") this.pause(UNREACHABLE_PAUSE_MS, error);
        else if (err.retryAfterMs) this.pause(err.retryAfterMs, error);
      }
    }
  }

  pause(ms, error) {
    this.pausedUntil = this.now() + ms;
    this.pauseError = error;
  }

  /** True while requests are paused (server down or asked us to wait). */
  paused() {
    return this.now() < this.pausedUntil;
  }
}
