// Settings: defaults, validation, site lists and match patterns. An ES module shared by the
// service worker, the options page and the popup. Everything above loadSettings() is pure so
// node tests cover it.
//
// Where settings live:
//   chrome.storage.sync  - everything in DEFAULTS (follows the user to their other browsers)
//   chrome.storage.local - apiKey only: a secret stays on this machine; only the service
//                          worker and the options page read it, never a content script.

export const DEFAULTS = Object.freeze({
  serverUrl: "http://127.0.0.1:8000", // the AltCap service (make run serves here)
  prefix: "Appears to be: ", // marks machine-written alt text for screen-reader users
  mode: "auto", // "auto": describe on sites AltCap may access; "on-demand": only when asked
  sitesAlways: Object.freeze([]), // hosts described automatically, whatever the mode
  sitesNever: Object.freeze([]), // hosts AltCap never describes by itself
  allowBytes: false, // may the extension send image bytes (data:, blob:, intranet images)?
  allowIncognito: false, // describe in private windows (when the browser lets AltCap run there)
  consented: false, // nothing reaches the server before the user agrees on the options page
});

export const MODES = Object.freeze(["auto", "on-demand"]);
export const MAX_PREFIX_LENGTH = 80;
export const MAX_SITES = 500; // storage.sync allows 8 KB per item

/** "https://host[:port][/base]" without a trailing slash, or null if it is not a usable
 * http(s) URL. Credentials, queries and fragments are refused rather than silently dropped. */
export function normalizeServerUrl(text) {
  let url;
  try {
    url = new URL(String(text ?? "").trim());
  } catch {
    return null;
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") return null;
  if (url.username || url.password || url.search || url.hash) return null;
  return url.origin + url.pathname.replace(/\/+$/, "");
}

/** True for a plain http:// address on another computer: what is sent there (images, their
 * addresses, the API key) crosses the network unencrypted. Loopback addresses (127.0.0.0/8,
 * [::1], localhost and *.localhost) never leave this computer. */
export function isPlainHttpElsewhere(url) {
  let parsed;
  try {
    parsed = new URL(String(url ?? ""));
  } catch {
    return false;
  }
  if (parsed.protocol !== "http:") return false;
  const host = parsed.hostname.toLowerCase().replace(/\.$/, "");
  const loopback =
    host === "localhost" || host.endsWith(".localhost") || host === "[::1]" || /^127(\.\d{1,3}){3}$/.test(host);
  return !loopback;
}

/** A host the user typed ("Example.com", "https://www.example.com/page", "*.example.com",
 * "localhost:8080") -> "example.com", "www.example.com", "example.com", "localhost"; or null.
 * Ports are dropped: browser match patterns cannot name them. */
export function normalizeHost(entry) {
  let text = String(entry ?? "").trim().toLowerCase();
  if (!text) return null;
  if (!/^[a-z][a-z0-9+.-]*:\/\//.test(text)) text = "http://" + text.replace(/^\*\./, "");
  let host;
  try {
    const url = new URL(text);
    if (url.protocol !== "http:" && url.protocol !== "https:") return null;
    host = url.hostname; // IDN -> punycode, IPv4 spellings normalised, IPv6 in brackets
  } catch {
    return null;
  }
  host = host.replace(/\.$/, "");
  if (/^\[[0-9a-f:.]+\]$/.test(host)) return host;
  if (!/^[a-z0-9_-]+(\.[a-z0-9_-]+)*$/.test(host)) return null;
  return host;
}

/** One host per line (commas and spaces also separate). Keeps order, drops duplicates. */
export function parseHostList(text) {
  const hosts = [];
  const invalid = [];
  for (const part of String(text ?? "").split(/[\s,]+/)) {
    if (!part) continue;
    const host = normalizeHost(part);
    if (host === null) invalid.push(part);
    else if (!hosts.includes(host)) hosts.push(host);
  }
  return { hosts: hosts.slice(0, MAX_SITES), invalid };
}

export function isIpHost(host) {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host) || host.startsWith("[");
}

/** "example.com" in a list covers example.com and its subdomains; IPs and single-label
 * hosts (localhost) only themselves. */
export function hostMatches(hostname, entry) {
  const h = String(hostname || "").toLowerCase().replace(/\.$/, "");
  if (!h || !entry) return false;
  if (h === entry) return true;
  return !isIpHost(entry) && entry.includes(".") && h.endsWith("." + entry);
}

/** "never" | "always" | "default" for a page's hostname; "never" wins over "always". */
export function siteRule(settings, hostname) {
  if ((settings.sitesNever || []).some((e) => hostMatches(hostname, e))) return "never";
  if ((settings.sitesAlways || []).some((e) => hostMatches(hostname, e))) return "always";
  return "default";
}

/** The match pattern for a list entry: "*://*.example.com/*" (covers example.com too) or
 * "*://127.0.0.1/*". "*" as a scheme means http and https. */
export function hostPattern(host) {
  if (isIpHost(host) || !host.includes(".")) return `*://${host}/*`;
  return `*://*.${host}/*`;
}

/** The host permission that lets the service worker reach a server whatever its CORS says. */
export function originPattern(url) {
  const u = new URL(url);
  return `${u.protocol}//${u.hostname}/*`;
}

const ALL_SITES = ["<all_urls>", "*://*/*"];

export function coversAllSites(origins) {
  const list = origins || [];
  return (
    ALL_SITES.some((o) => list.includes(o)) ||
    (list.includes("http://*/*") && list.includes("https://*/*"))
  );
}

/**
 * Where the content script is registered to run by itself (chrome.scripting
 * .registerContentScripts). `granted`: chrome.permissions.getAll().origins.
 * - nothing before consent;
 * - "auto": every site AltCap was granted (all sites, or the ones granted one by one);
 * - "on-demand": only the "always" sites (elsewhere the shortcut, the popup or the context
 *   menu inject it through activeTab);
 * - "never" sites are excluded in both modes.
 * The browser still injects only where a host permission is granted, so listing a site here
 * never widens access.
 */
export function contentScriptMatches(settings, granted) {
  if (!settings.consented) return { matches: [], excludeMatches: [] };
  const always = (settings.sitesAlways || []).map(hostPattern);
  let matches;
  if (settings.mode === "auto") {
    const web = (granted || []).filter((o) => /^(\*|https?):\/\/[^/]+\//.test(o));
    matches = coversAllSites(granted) ? ["http://*/*", "https://*/*"] : [...always, ...web];
  } else {
    matches = always;
  }
  return {
    matches: [...new Set(matches)],
    excludeMatches: [...new Set((settings.sitesNever || []).map(hostPattern))],
  };
}

function hostArray(value) {
  if (!Array.isArray(value)) return [];
  const out = [];
  for (const entry of value) {
    if (typeof entry !== "string") continue;
    const host = normalizeHost(entry);
    if (host !== null && !out.includes(host)) out.push(host);
  }
  return out.slice(0, MAX_SITES);
}

/** Stored values -> complete, valid settings (anything odd falls back to its default). */
export function normalizeSettings(raw) {
  const s = raw && typeof raw === "object" ? raw : {};
  return {
    serverUrl: normalizeServerUrl(s.serverUrl) ?? DEFAULTS.serverUrl,
    prefix:
      typeof s.prefix === "string" ? s.prefix.slice(0, MAX_PREFIX_LENGTH) : DEFAULTS.prefix,
    mode: MODES.includes(s.mode) ? s.mode : DEFAULTS.mode,
    sitesAlways: hostArray(s.sitesAlways),
    sitesNever: hostArray(s.sitesNever),
    allowBytes: s.allowBytes === true,
    allowIncognito: s.allowIncognito === true,
    consented: s.consented === true,
  };
}

/** Add or remove a host from the two site lists (popup's on/off switch for one site). */
export function withSite(settings, host, on) {
  const always = settings.sitesAlways.filter((h) => h !== host);
  const never = settings.sitesNever.filter((h) => h !== host);
  if (on) always.push(host);
  else never.push(host);
  return { sitesAlways: always, sitesNever: never };
}

// --- storage (chrome.* from here on) -----------------------------------------------------

/** All settings plus apiKey. `storage` defaults to chrome.storage (tests pass a fake). */
export async function loadSettings(storage = globalThis.chrome.storage) {
  const [synced, local] = await Promise.all([
    storage.sync.get(Object.keys(DEFAULTS)),
    storage.local.get(["apiKey"]),
  ]);
  const settings = normalizeSettings(synced);
  settings.apiKey = typeof local.apiKey === "string" ? local.apiKey : "";
  return settings;
}

/** Save some settings; apiKey goes to storage.local, the rest to storage.sync. */
export async function saveSettings(partial, storage = globalThis.chrome.storage) {
  const { apiKey, ...rest } = partial;
  const writes = [];
  const synced = {};
  for (const key of Object.keys(rest)) if (key in DEFAULTS) synced[key] = rest[key];
  if (Object.keys(synced).length) writes.push(storage.sync.set(synced));
  if (apiKey !== undefined) writes.push(storage.local.set({ apiKey: String(apiKey) }));
  await Promise.all(writes);
}
