// Message validation for the service worker: the only network caller trusts nothing it is
// sent. Pure (no chrome.* calls) so node tests cover it; service-worker.js passes the ids in.
//
// Who may send what:
//   content script (a page's tab) -> "hello", "describe", "counts"
//   extension page (popup, options) -> "describe-tab", "tab-status", "tab-toggle",
//                                      "tab-restore", "check-server", "sync"
// Pages themselves cannot reach chrome.runtime.onMessage at all (no "externally_connectable"),
// and a content script cannot pretend to be an extension page: sender.url is set by the
// browser, not by the message.

export const MAX_IMAGES_PER_MESSAGE = 64; // the content script sends at most 32
export const MAX_ID_LENGTH = 64;
export const MAX_URL_LENGTH = 8192; // http(s) and blob: URLs
// data: URLs and canvas snapshots: ~10 MB of image as base64, under the server's 20 MiB body.
export const MAX_DATA_LENGTH = 14 * 1024 * 1024;
export const MAX_COUNT = 1_000_000;
export const MAX_ALT_LENGTH = 2000; // an author's alt sent for checking (network.js keeps 1000)

const FROM_CONTENT = new Set(["hello", "describe", "counts"]);
const TAB_TYPES = ["describe-tab", "tab-status", "tab-toggle", "tab-restore"]; // {type, tabId}
const FROM_EXTENSION_PAGE = new Set([...TAB_TYPES, "check-server", "sync"]);
export const KNOWN_TYPES = new Set([...FROM_CONTENT, ...FROM_EXTENSION_PAGE]);

const ALLOWED_KEYS = {
  hello: ["type"],
  describe: ["type", "images"],
  counts: ["type", "found", "described", "failed", "unsure", "suspect"],
  ...Object.fromEntries(TAB_TYPES.map((type) => [type, ["type", "tabId"]])),
  "check-server": ["type"],
  sync: ["type"],
};

function fail(error) {
  return { ok: false, error };
}

function isPlainObject(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function onlyKeys(obj, allowed) {
  return Object.keys(obj).every((k) => allowed.includes(k));
}

function isCount(value) {
  return Number.isInteger(value) && value >= 0 && value <= MAX_COUNT;
}

function fromExtensionPage(sender, extensionOrigin) {
  return (
    typeof sender.url === "string" &&
    typeof extensionOrigin === "string" &&
    extensionOrigin.length > 0 &&
    sender.url.startsWith(extensionOrigin)
  );
}

function fromContentScript(sender, extensionOrigin) {
  const tab = sender.tab;
  return (
    Boolean(tab) &&
    typeof tab === "object" &&
    Number.isInteger(tab.id) &&
    tab.id >= 0 &&
    !fromExtensionPage(sender, extensionOrigin)
  );
}

/** One image of a "describe" message: {id, url[, data][, alt]} -> a clean copy, or an error
 * string. `alt`: the author's alt, sent only for the opt-in check (settings.checkAlt). */
export function validateImage(image) {
  if (!isPlainObject(image) || !onlyKeys(image, ["id", "url", "data", "alt"])) {
    return "each image must be {id, url}, {id, url, data} or either with alt";
  }
  const { id, url, data, alt } = image;
  if (typeof id !== "string" || id.length === 0 || id.length > MAX_ID_LENGTH) {
    return "image id must be a short string";
  }
  if (typeof url !== "string" || url.length === 0) return "image url must be a string";
  const isDataUrl = /^data:/i.test(url);
  if (url.length > (isDataUrl ? MAX_DATA_LENGTH : MAX_URL_LENGTH)) return "image url is too long";
  if (!/^(https?|data|blob):/i.test(url)) return "image url must be http(s), data: or blob:";
  if (data !== undefined) {
    if (typeof data !== "string" || !/^data:image\/[a-z0-9.+-]+;base64,/i.test(data)) {
      return "image data must be a base64 data:image/... URL";
    }
    if (data.length > MAX_DATA_LENGTH) return "image data is too large";
  }
  if (alt !== undefined && (typeof alt !== "string" || !alt.trim() || alt.length > MAX_ALT_LENGTH)) {
    return "image alt must be a short string that says something";
  }
  const clean = { id, url };
  if (data !== undefined) clean.data = data;
  if (alt !== undefined) clean.alt = alt;
  return clean;
}

/**
 * Check a message against its sender. Returns {ok: true, message} with a clean copy (only
 * known fields, so later code never sees anything a sender slipped in), or {ok: false, error}.
 * `ids`: {runtimeId: chrome.runtime.id, extensionOrigin: chrome.runtime.getURL("")}.
 */
export function validate(message, sender, ids) {
  const { runtimeId, extensionOrigin } = ids || {};
  if (!sender || typeof sender !== "object") return fail("no sender");
  if (typeof runtimeId !== "string" || !runtimeId || sender.id !== runtimeId) {
    return fail("message from another extension");
  }
  if (!isPlainObject(message)) return fail("message must be an object");
  const { type } = message;
  if (typeof type !== "string" || !KNOWN_TYPES.has(type)) return fail("unknown message type");
  if (!onlyKeys(message, ALLOWED_KEYS[type])) return fail(`unexpected field in ${type}`);

  if (FROM_CONTENT.has(type) && !fromContentScript(sender, extensionOrigin)) {
    return fail(`${type} must come from a content script in a tab`);
  }
  if (FROM_EXTENSION_PAGE.has(type) && !fromExtensionPage(sender, extensionOrigin)) {
    return fail(`${type} must come from an extension page`);
  }

  switch (type) {
    case "hello":
    case "check-server":
    case "sync":
      return { ok: true, message: { type } };
    case "counts": {
      // unsure: no confident description; suspect: authors' alts noted as possibly not
      // matching (a content script of before sends neither)
      const { found, described, failed, unsure = 0, suspect = 0 } = message;
      if (![found, described, failed, unsure, suspect].every(isCount)) return fail("counts must be integers >= 0");
      return { ok: true, message: { type, found, described, failed, unsure, suspect } };
    }
    case "describe-tab":
    case "tab-status":
    case "tab-toggle":
    case "tab-restore": {
      const { tabId } = message;
      if (!Number.isInteger(tabId) || tabId < 0) return fail("tabId must be an integer >= 0");
      return { ok: true, message: { type, tabId } };
    }
    case "describe": {
      const { images } = message;
      if (!Array.isArray(images) || images.length === 0) return fail("images must be a list");
      if (images.length > MAX_IMAGES_PER_MESSAGE) return fail("too many images in one message");
      const clean = [];
      const seen = new Set();
      for (const image of images) {
        const checked = validateImage(image);
        if (typeof checked === "string") return fail(checked);
        if (seen.has(checked.id)) return fail("image ids must be unique");
        seen.add(checked.id);
        clean.push(checked);
      }
      return { ok: true, message: { type, images: clean } };
    }
    default:
      return fail("unknown message type");
  }
}
