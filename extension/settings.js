// Settings: defaults, validation, site lists and match patterns. An ES module shared by the
// service worker, the options page and the popup. Everything above loadSettings() is pure so
// node tests cover it.
//
// Where settings live:
//   chrome.storage.sync  - everything in DEFAULTS but the consent (the preferences follow the
//                          user to their other browsers)
//   chrome.storage.local - the consent, {consented, consentedServer}: given in this browser
//                          and for that server address, so it neither roams to a browser where
//                          the user never agreed nor covers a server address synced from one
//   secretStore()        - apiKey: IndexedDB of the extension's own origin, which the service
//                          worker and the options page open and no content script can (they
//                          run in the page's origin). Not storage.local: Firefox hands that to
//                          content scripts, with no setAccessLevel() to stop it.

export const DEFAULTS = Object.freeze({
  serverUrl: "http://127.0.0.1:8000", // the AltCap service (make run serves here)
  prefix: "Appears to be: ", // marks machine-written alt text for screen-reader users
  textPrefix: "Appears to say: ", // the mark before an image's own text, read by the server
  mode: "auto", // "auto": describe on sites AltCap may access; "on-demand": only when asked
  sitesAlways: Object.freeze([]), // hosts described automatically, whatever the mode
  sitesNever: Object.freeze([]), // hosts AltCap never describes by itself
  allowBytes: false, // may the extension send image bytes (data:, blob:, intranet images)?
  allowIncognito: false, // describe in private windows (when the browser lets AltCap run there)
  // Opt-in (issue 23): send the alt text authors wrote, of images in view, for the server to
  // check against the image; a "suspect" one gets an aria-description beside it.
  checkAlt: false,
  // Ask the server to read the text in images (OCR: an image of text gets "Appears to say:");
  // off, requests carry "read_text": false and get captions only, and thin banners, written
  // only with their text, are not sent.
  readText: true,
  consented: false, // nothing reaches the server before the user agrees on the options page
});

const SYNCED = Object.keys(DEFAULTS).filter((key) => key !== "consented");

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

function prefixOr(value, fallback) {
  return typeof value === "string" ? value.slice(0, MAX_PREFIX_LENGTH) : fallback;
}

/** Stored values -> complete, valid settings (anything odd falls back to its default). */
export function normalizeSettings(raw) {
  const s = raw && typeof raw === "object" ? raw : {};
  return {
    serverUrl: normalizeServerUrl(s.serverUrl) ?? DEFAULTS.serverUrl,
    prefix: prefixOr(s.prefix, DEFAULTS.prefix),
    textPrefix: prefixOr(s.textPrefix, DEFAULTS.textPrefix),
    mode: MODES.includes(s.mode) ? s.mode : DEFAULTS.mode,
    sitesAlways: hostArray(s.sitesAlways),
    sitesNever: hostArray(s.sitesNever),
    allowBytes: s.allowBytes === true,
    allowIncognito: s.allowIncognito === true,
    checkAlt: s.checkAlt === true,
    readText: s.readText !== false,
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

const SECRETS_DB = "altcap"; // IndexedDB database of the extension's origin
const SECRETS_STORE = "secrets"; // its object store: name -> value

/** A key-value store in IndexedDB (`factory`: indexedDB); every call throws where there is
 * none (node, or a browser that keeps it from extensions, as Firefox may in permanent
 * private browsing). */
export function indexedDbStore(factory = globalThis.indexedDB) {
  const open = () =>
    new Promise((resolve, reject) => {
      if (!factory) throw new Error("no IndexedDB here");
      const request = factory.open(SECRETS_DB, 1);
      request.onupgradeneeded = () => request.result.createObjectStore(SECRETS_STORE);
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  async function run(mode, action) {
    const db = await open();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(SECRETS_STORE, mode);
        const request = action(tx.objectStore(SECRETS_STORE));
        tx.oncomplete = () => resolve(request.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction aborted"));
      });
    } finally {
      db.close();
    }
  }
  return {
    get: (name) => run("readonly", (store) => store.get(name)),
    set: (name, value) => run("readwrite", (store) => store.put(value, name)),
  };
}

/** Where secrets (the API key) are kept: `disk` (IndexedDB of the extension's origin); where
 * that fails, storage.session, which content scripts cannot read either (Chrome's default
 * access level, Firefox's only one) but which is emptied when the browser closes. set()
 * resolves to "disk" or "session". */
export function secretStore(storage = globalThis.chrome.storage, disk = indexedDbStore()) {
  return {
    async get(name) {
      try {
        const value = await disk.get(name);
        if (value !== undefined) return value;
      } catch {
        // no IndexedDB here: the session copy, if any
      }
      return storage.session ? (await storage.session.get([name]))[name] : undefined;
    },
    async set(name, value) {
      try {
        await disk.set(name, value);
        return "disk";
      } catch (err) {
        if (!storage.session) throw err;
        await storage.session.set({ [name]: value });
        return "session";
      }
    },
  };
}

/** All settings plus apiKey. `storage` defaults to chrome.storage (tests pass fakes). */
export async function loadSettings(storage = globalThis.chrome.storage, secrets = secretStore(storage)) {
  const [synced, local] = await Promise.all([
    storage.sync.get([...SYNCED, "consented"]),
    storage.local.get(["consented", "consentedServer", "apiKey"]),
  ]);
  const settings = normalizeSettings(synced);
  let consent = local;
  if (!("consented" in local) && "consented" in synced) {
    // Kept in storage.sync by an older version: moved here once, and taken out of sync so
    // that it reaches no other browser.
    consent = { consented: synced.consented === true, consentedServer: settings.serverUrl };
    await storage.local.set(consent);
    await storage.sync.remove("consented");
  }
  settings.consented = consent.consented === true && consent.consentedServer === settings.serverUrl;
  settings.apiKey = await loadApiKey(storage, secrets, local.apiKey);
  return settings;
}

async function loadApiKey(storage, secrets, legacy) {
  let key = await secrets.get("apiKey");
  if (legacy !== undefined) {
    // An older version kept it in storage.local: into the secret store, out of there.
    if (typeof key !== "string" && typeof legacy === "string") {
      await secrets.set("apiKey", legacy);
      key = legacy;
    }
    await storage.local.remove("apiKey");
  }
  return typeof key === "string" ? key : "";
}

/** Save some settings: the consent to storage.local (for the server address saved with it,
 * or the current one), apiKey to the secret store, the rest to storage.sync. Resolves to
 * {apiKeyKept: "disk" | "session"} when a key was saved. */
export async function saveSettings(partial, storage = globalThis.chrome.storage, secrets = secretStore(storage)) {
  const { apiKey, consented, ...rest } = partial;
  const synced = {};
  for (const key of Object.keys(rest)) if (SYNCED.includes(key)) synced[key] = rest[key];
  const writes = [];
  if (Object.keys(synced).length) writes.push(storage.sync.set(synced));
  if (consented !== undefined) {
    const server =
      normalizeServerUrl(synced.serverUrl) ?? normalizeSettings(await storage.sync.get(["serverUrl"])).serverUrl;
    writes.push(storage.local.set({ consented: consented === true, consentedServer: server }));
  }
  const saved = {};
  if (apiKey !== undefined) {
    saved.apiKeyKept = await secrets.set("apiKey", String(apiKey));
    writes.push(storage.local.remove("apiKey")); // an older version's copy
  }
  await Promise.all(writes);
  return saved;
}
