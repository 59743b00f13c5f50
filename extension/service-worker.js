// AltCap service worker (Chrome) / background event page (Firefox): the only part of the
// extension that talks to the network. It validates every message (messages.js), reads the
// settings (settings.js), asks the AltCap server for captions (network.js), registers the
// content script for the sites the user allowed, and runs the context menu, the keyboard
// shortcut and the badge.
//
// The content script runs in every frame AltCap may access (iframes too), and each frame
// counts its own images: tab-state.js keeps the frames of each tab, so that the badge and the
// popup show the sums and the popup's toggle reaches every frame.
//
// Listeners are registered at the top level: an MV3 worker may be started just to deliver
// one event, and it must find its listener there.

import { validate } from "./messages.js";
import { CaptionClient, languageName } from "./network.js";
import { contentScriptMatches, loadSettings, siteRule } from "./settings.js";
import { TabFrames, combineStatus } from "./tab-state.js";

const IDS = { runtimeId: chrome.runtime.id, extensionOrigin: chrome.runtime.getURL("") };
const SCRIPT_ID = "altcap";
const SCRIPT_FILES = ["detection.js", "caption-text.js", "page-image.js", "content-script.js"];
const MENU_ID = "altcap-describe-image";
const COMMAND = "describe-page";
const TAB_STATE_KEY = "tabFrames"; // in chrome.storage.session

const client = new CaptionClient({ fetch: (...args) => fetch(...args) });

function errorReply(code, message) {
  return { error: { code, message } };
}

function openOptions() {
  try {
    Promise.resolve(chrome.runtime.openOptionsPage()).catch(() => {});
  } catch {
    // no options page in this context
  }
}

// --- settings-derived state -----------------------------------------------------------------

let wordsPromise = null;
const NO_WORDS = { words: [], stopwords: {} };

/** The meaningless-alt word lists, shipped as an extension file and handed to content
 * scripts in "hello" (they cannot read extension files that are not web-accessible).
 *
 * Resolves to {words: [word, ...], stopwords: {language: [word, ...]}}: the file's "words"
 * and "stopwords", which detection.js's setMeaninglessWords() takes. Empty lists where the
 * file cannot be read (tried again on the next call): only the structural rules apply then.
 */
function meaninglessWords() {
  if (!wordsPromise) {
    wordsPromise = fetch(chrome.runtime.getURL("meaningless-alt.json"))
      .then((r) => r.json())
      .then((json) => ({ words: stringList(json.words), stopwords: stopwordTable(json.stopwords) }))
      .catch(() => {
        wordsPromise = null;
        return NO_WORDS;
      });
  }
  return wordsPromise;
}

function stringList(list) {
  return Array.isArray(list) ? list.map(String) : [];
}

/** {language: [word, ...]} with string lists only; {} for anything else. */
function stopwordTable(table) {
  if (!table || typeof table !== "object" || Array.isArray(table)) return {};
  return Object.fromEntries(Object.entries(table).map(([lang, list]) => [lang, stringList(list)]));
}

function hostnameOf(url) {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.hostname : "";
  } catch {
    return "";
  }
}

/** The host whose site rules apply to a frame: its own URL's; for about:blank, srcdoc and
 * blob: frames, the origin they inherit (Chrome says it in sender.origin); the tab's URL is
 * the last resort, for the top frame only. */
function senderHost(sender) {
  const fromOrigin = sender.origin && sender.origin !== "null" ? hostnameOf(sender.origin) : "";
  const top = !sender.frameId && sender.tab ? hostnameOf(sender.tab.url) : "";
  return hostnameOf(sender.url) || fromOrigin || top;
}

function originOf(url) {
  try {
    const origin = new URL(url).origin; // a blob: URL's is its creator's
    return origin && origin !== "null" ? origin : "";
  } catch {
    return "";
  }
}

/** Whose captions these are: the top-level page's origin and the asking frame's, as the
 * browser says them (never as the page does). A caption made for one of them (from bytes
 * only that page could read, say) is never handed to another. Where the browser does not say
 * (no access to the tab's address; an opaque or about:blank frame), the tab or the frame
 * stands in: a partition of its own, never a shared one. */
function partitionOf(sender) {
  const tab = sender.tab || {};
  const top = originOf(tab.url) || `tab:${tab.id}`;
  const frame =
    (sender.origin && sender.origin !== "null" ? sender.origin : "") ||
    originOf(sender.url) ||
    `frame:${tab.id}:${frameOf(sender)}:${sender.documentId || ""}`;
  return `${top} ${frame}`;
}

function frameOf(sender) {
  return Number.isInteger(sender.frameId) && sender.frameId >= 0 ? sender.frameId : 0;
}

function incognitoRefused(settings, tab) {
  return Boolean(tab && tab.incognito) && !settings.allowIncognito;
}

let lastServer = null;

async function currentSettings() {
  const settings = await loadSettings();
  if (settings.serverUrl !== lastServer) {
    client.clear(); // captions from another server are another model's
    lastServer = settings.serverUrl;
  }
  return settings;
}

// --- content script registration ------------------------------------------------------------

let syncing = Promise.resolve();
let registered = { matches: [], excludeMatches: [] }; // what the last sync did

/** (Re)register the content script for the sites the settings and the granted host
 * permissions allow. Serialised: registering the same id twice at once fails. Resolves to
 * {matches, excludeMatches} (and {error} if the browser refused). */
function syncRegistration() {
  syncing = syncing.then(doSync, doSync);
  return syncing;
}

async function doSync() {
  try {
    const settings = await loadSettings();
    const granted = (await chrome.permissions.getAll()).origins || [];
    const { matches, excludeMatches } = contentScriptMatches(settings, granted);
    const existing = await chrome.scripting.getRegisteredContentScripts({ ids: [SCRIPT_ID] });
    const script = {
      id: SCRIPT_ID,
      js: SCRIPT_FILES,
      matches,
      excludeMatches, // [] clears an earlier list when updating
      runAt: "document_idle",
      // Iframes too: each frame is matched by its own URL (so its own site needs access,
      // as any page), and about:blank / srcdoc / blob: frames by the origin they inherit.
      allFrames: true,
      matchOriginAsFallback: true,
      persistAcrossSessions: false, // registered again at every start (Firefox-safe)
    };
    // Updated in place, never unregistered and registered again: a page or frame that
    // loaded in between would get no content script.
    if (existing.length && matches.length) await chrome.scripting.updateContentScripts([script]);
    else if (existing.length) await chrome.scripting.unregisterContentScripts({ ids: [SCRIPT_ID] });
    else if (matches.length) await chrome.scripting.registerContentScripts([script]);
    registered = { matches, excludeMatches };
  } catch (err) {
    registered = { matches: [], excludeMatches: [], error: String((err && err.message) || err) };
  }
  return registered;
}

async function setup() {
  // Content scripts have no use for storage at all (the API key is not there either: see
  // settings.js), so close both areas to them where the browser supports it (Chrome).
  for (const area of [chrome.storage.local, chrome.storage.sync]) {
    try {
      await area.setAccessLevel({ accessLevel: "TRUSTED_CONTEXTS" });
    } catch {
      // not supported for this area here: nothing reads it from a content script anyway
    }
  }
  try {
    await chrome.contextMenus.removeAll();
    chrome.contextMenus.create({
      id: MENU_ID,
      title: "Describe this image",
      contexts: ["image"],
    });
  } catch {
    // menus unavailable: the shortcut and popup still work
  }
  try {
    await chrome.action.setBadgeBackgroundColor({ color: "#1b4f8a" });
  } catch {
    // ignore
  }
  await syncRegistration();
}

chrome.runtime.onInstalled.addListener((details) => {
  setup();
  // First install: show the options page, where the consent is given.
  if (details && details.reason === "install") openOptions();
});
chrome.runtime.onStartup.addListener(() => setup());
chrome.storage.onChanged.addListener((changes, area) => {
  // The consent is this browser's (storage.local); the preferences roam (storage.sync).
  const keys = area === "local" ? ["consented", "consentedServer"] : ["serverUrl", "mode", "sitesAlways", "sitesNever"];
  if ((area === "local" || area === "sync") && keys.some((k) => k in changes)) syncRegistration();
  if (area === "sync" && changes.checkAlt) tellFrames({ type: "check-alt", on: changes.checkAlt.newValue === true });
});
chrome.permissions.onAdded.addListener(() => syncRegistration());
chrome.permissions.onRemoved.addListener(() => syncRegistration());

// --- describing -----------------------------------------------------------------------------

// --- tabs and their frames -------------------------------------------------------------------

let tabState = null; // TabFrames, loaded from storage.session on first use
let tabChain = Promise.resolve();

/** Run fn(state) on the tab state, one change at a time, and save it afterwards (the worker
 * may be stopped between two messages). Resolves to fn's result. */
function withTabs(fn) {
  const run = async () => {
    const session = chrome.storage.session;
    if (!tabState) {
      let saved = null;
      try {
        saved = session ? (await session.get(TAB_STATE_KEY))[TAB_STATE_KEY] : null;
      } catch {
        // no session storage here: keep the state in memory only
      }
      tabState = TabFrames.fromJSON(saved);
    }
    const result = fn(tabState);
    try {
      if (session) await session.set({ [TAB_STATE_KEY]: tabState.toJSON() });
    } catch {
      // ignore: the state is still in memory
    }
    return result;
  };
  tabChain = tabChain.then(run, run);
  return tabChain;
}

async function updateBadge(tabId) {
  const { described } = await withTabs((state) => state.totals(tabId));
  await setBadge(tabId, described);
}

/** Send a message to one frame of a tab; null when nothing answers there (and the frame is
 * forgotten: its document is gone or never ran the content script). */
async function toFrame(tabId, frameId, message) {
  try {
    const answer = await chrome.tabs.sendMessage(tabId, message, { frameId });
    if (answer && typeof answer === "object") return answer;
  } catch {
    // no content script in that frame (any more)
  }
  if (frameId !== 0) await withTabs((state) => state.removeFrame(tabId, frameId));
  return null;
}

/** Send a message to every frame of the tab that runs the content script; answers in the
 * order of frameIds() (top frame first, null where none came). */
async function toFrames(tabId, message) {
  const frameIds = await withTabs((state) => state.frameIds(tabId));
  return Promise.all(frameIds.map((frameId) => toFrame(tabId, frameId, message)));
}

/** A setting the content scripts follow live (the opt-in alt check) changed: every frame of
 * every tab that runs one is told; switched off, the notes it added go at once. */
async function tellFrames(message) {
  const tabIds = await withTabs((state) => state.tabIds());
  await Promise.all(tabIds.map((tabId) => toFrames(tabId, message)));
}

const NO_PAGE = () => ({ ok: false, ...errorReply("no_content_script", "AltCap is not running on this page") });

/** The popup's numbers for a tab: every frame's counts added up. */
async function tabStatus(tabId) {
  const status = combineStatus(await toFrames(tabId, { type: "status" }));
  return status ? { ok: true, ...status } : NO_PAGE();
}

/** Hide or show AltCap's descriptions in every frame of the tab: all frames end up in the
 * same state (the top frame's, switched), and frames that load later follow it. */
async function tabToggle(tabId) {
  const before = combineStatus(await toFrames(tabId, { type: "status" }));
  if (!before) return NO_PAGE();
  const showing = !before.showing;
  await withTabs((state) => state.setHidden(tabId, !showing));
  const status = combineStatus(await toFrames(tabId, { type: "toggle", showing }));
  return status ? { ok: true, ...status, showing } : NO_PAGE();
}

/** The site was switched off in the popup: every frame puts its page back and stops. */
async function tabRestore(tabId) {
  const status = combineStatus(await toFrames(tabId, { type: "restore" }));
  await withTabs((state) => state.setHidden(tabId, false));
  await updateBadge(tabId);
  return status ? { ok: true, ...status } : NO_PAGE();
}

async function hello(sender) {
  const settings = await currentSettings();
  const rule = siteRule(settings, senderHost(sender));
  const enabled = settings.consented && rule !== "never" && !incognitoRefused(settings, sender.tab);
  const tabId = sender.tab.id;
  const hidden = await withTabs((state) => {
    state.hello(tabId, frameOf(sender));
    return state.isHidden(tabId);
  });
  await updateBadge(tabId);
  return {
    consented: settings.consented,
    enabled,
    auto: enabled && (settings.mode === "auto" || rule === "always"),
    showing: !hidden, // a frame that loads after "hide" starts hidden too
    prefix: settings.prefix,
    textPrefix: settings.textPrefix,
    checkAlt: settings.checkAlt, // send authors' alts of images in view for checking (opt-in)
    readText: settings.readText, // off: the server reads no text, so thin banners are not sent
    ...(await meaninglessWords()), // words, stopwords
  };
}

async function describe(images, sender) {
  const settings = await currentSettings();
  let refusal = null;
  if (!settings.consented) {
    refusal = errorReply("no_consent", "agree to the privacy notice in AltCap's options first");
  } else if (incognitoRefused(settings, sender.tab)) {
    refusal = errorReply("incognito_off", "AltCap is off in private windows (see its options)");
  }
  if (refusal) return { results: images.map((image) => ({ id: image.id, ...refusal })) };
  const scope = sender.tab && sender.tab.incognito ? "incognito" : "normal";
  return { results: await client.describe(images, settings, { scope, partition: partitionOf(sender) }) };
}

async function setBadge(tabId, described) {
  try {
    await chrome.action.setBadgeText({ tabId, text: described > 0 ? String(Math.min(described, 999)) : "" });
  } catch {
    // the tab is gone
  }
}

/** Make sure the content script runs in a frame of the tab (activeTab or a host permission
 * is needed; both throw here otherwise). */
async function ensureContentScript(tabId, frameId = 0) {
  try {
    const answer = await chrome.tabs.sendMessage(tabId, { type: "ping" }, { frameId });
    if (answer && answer.pong) return;
  } catch {
    // no content script there yet
  }
  await chrome.scripting.executeScript({ target: { tabId, frameIds: [frameId] }, files: SCRIPT_FILES });
}

/** Best effort: the content script in every other frame of the tab that this activeTab grant
 * or a host permission covers (frames the browser refuses are skipped). Their frame ids. */
async function injectSubframes(tabId) {
  try {
    const results = await chrome.scripting.executeScript({ target: { tabId, allFrames: true }, files: SCRIPT_FILES });
    return (results || []).map((r) => r && r.frameId).filter((id) => Number.isInteger(id) && id !== 0);
  } catch {
    return [];
  }
}

/** "Describe images on this page now" (shortcut, popup). */
async function describeTab(tabId) {
  const settings = await currentSettings();
  if (!settings.consented) {
    openOptions();
    return { ok: false, ...errorReply("no_consent", "agree to the privacy notice in the options first") };
  }
  try {
    await ensureContentScript(tabId);
  } catch {
    return {
      ok: false,
      ...errorReply(
        "no_access",
        "AltCap cannot read this page. Use the AltCap button or the shortcut on the page itself, or allow the site in the options.",
      ),
    };
  }
  // The other frames describe quietly: the top frame's announcements are the ones heard.
  const subframes = new Set([...(await injectSubframes(tabId)), ...(await withTabs((state) => state.frameIds(tabId)))]);
  subframes.delete(0);
  let answer = null;
  try {
    answer = await chrome.tabs.sendMessage(tabId, { type: "describe-now" }, { frameId: 0 });
  } catch {
    answer = null;
  }
  await Promise.all([...subframes].map((frameId) => toFrame(tabId, frameId, { type: "describe-now", quiet: true })));
  return answer && typeof answer === "object" ? answer : { ok: false, ...errorReply("no_answer", "the page did not answer") };
}

async function checkServer() {
  const settings = await currentSettings();
  if (!settings.consented) {
    return { ok: false, message: "Agree to the privacy notice first: until then AltCap contacts no server." };
  }
  const headers = settings.apiKey ? { Authorization: `Bearer ${settings.apiKey}` } : {};
  const url = settings.serverUrl + "/readyz";
  try {
    // No redirect is followed (nor is one when captioning): "ready" must be this server's word.
    const response = await fetch(url, { headers, credentials: "omit", cache: "no-store", redirect: "error" });
    const body = await response.json().catch(() => null);
    if (response.ok) {
      return { ok: true, message: `The AltCap server at ${settings.serverUrl} is ready${serverDetails(body)}.` };
    }
    const detail = body && body.error && body.error.message ? `: ${body.error.message}` : "";
    return { ok: false, message: `The server answered HTTP ${response.status}${detail}.` };
  } catch {
    if (await redirects(url)) {
      return {
        ok: false,
        message: `${settings.serverUrl} answers with a redirect to another address. AltCap follows no redirect (it would send your images, and the browser the request's body without the API key, to wherever it points): enter the address the server itself answers at, for example https:// instead of http://.`,
      };
    }
    return {
      ok: false,
      message: `Cannot reach ${settings.serverUrl}. Is the server running? If it does not allow this extension's origin (CORS), use "Allow AltCap to reach this server".`,
    };
  }
}

/** Whether `url` answers with a redirect: asked once more without following it, and without
 * the API key (fetch() fails the same way for a refused redirect as for no server at all). */
async function redirects(url) {
  try {
    const response = await fetch(url, { credentials: "omit", cache: "no-store", redirect: "manual" });
    return response.type === "opaqueredirect" || (response.status >= 300 && response.status < 400);
  } catch {
    return false;
  }
}

/** What /readyz says of the model: ": model clipcap-coco, descriptions in English (en)". */
function serverDetails(body) {
  if (!body || typeof body !== "object") return "";
  const parts = [];
  if (typeof body.model === "string" && body.model) parts.push(`model ${body.model.slice(0, 120)}`);
  const language = languageName(body.language);
  if (language) parts.push(`descriptions in ${language}`);
  return parts.length ? ": " + parts.join(", ") : "";
}

async function handle(message, sender) {
  switch (message.type) {
    case "hello":
      return hello(sender);
    case "describe":
      return describe(message.images, sender);
    case "counts":
      await withTabs((state) => state.setCounts(sender.tab.id, frameOf(sender), message));
      await updateBadge(sender.tab.id);
      return { ok: true };
    case "describe-tab":
      return describeTab(message.tabId);
    case "tab-status":
      return tabStatus(message.tabId);
    case "tab-toggle":
      return tabToggle(message.tabId);
    case "tab-restore":
      return tabRestore(message.tabId);
    case "check-server":
      return checkServer();
    case "sync":
      // The options page or popup saved settings: register now and say where AltCap runs,
      // so that the page can report it (and a test can wait for it).
      return syncRegistration();
    default:
      return errorReply("invalid_message", "unknown message type");
  }
}

chrome.runtime.onMessage.addListener((message, sender, sendResponse) => {
  const checked = validate(message, sender, IDS);
  if (!checked.ok) {
    sendResponse(errorReply("invalid_message", checked.error));
    return false;
  }
  handle(checked.message, sender).then(sendResponse, (err) =>
    sendResponse(errorReply("internal_error", String((err && err.message) || err))),
  );
  return true; // the answer comes asynchronously
});

// --- context menu, shortcut, badge ----------------------------------------------------------

chrome.contextMenus?.onClicked.addListener(async (info, tab) => {
  if (info.menuItemId !== MENU_ID || !tab || typeof tab.id !== "number") return;
  const settings = await currentSettings();
  if (!settings.consented) {
    openOptions();
    return;
  }
  const srcUrl = String(info.srcUrl || "");
  // Describe in the frame that holds the image; if AltCap may not run there (a cross-origin
  // frame), the top frame still captions the URL and announces it.
  for (const frameId of [info.frameId || 0, 0]) {
    try {
      await ensureContentScript(tab.id, frameId);
      await chrome.tabs.sendMessage(tab.id, { type: "describe-target", srcUrl }, { frameId });
      return;
    } catch {
      // try the top frame next
    }
  }
});

chrome.commands?.onCommand.addListener(async (command, tab) => {
  if (command !== COMMAND) return;
  let target = tab;
  if (!target || typeof target.id !== "number") {
    [target] = await chrome.tabs.query({ active: true, currentWindow: true });
  }
  if (target && typeof target.id === "number") await describeTab(target.id);
});

// A new page in the tab: its counts start again (changeInfo.url is only visible with host
// access, so the status alone decides).
chrome.tabs.onUpdated.addListener((tabId, changeInfo) => {
  if (changeInfo.status !== "loading") return;
  setBadge(tabId, 0);
  withTabs((state) => state.newPage(tabId));
});
chrome.tabs.onRemoved?.addListener((tabId) => withTabs((state) => state.closeTab(tabId)));
