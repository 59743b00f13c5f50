// Per-tab state kept by the service worker: which frames of a tab run the content script,
// each frame's counts, and whether the user hid AltCap's descriptions in that tab. Pure (no
// chrome.* calls) so node tests cover it; service-worker.js keeps one instance and saves it
// in chrome.storage.session, because an MV3 worker is stopped when idle and must not forget
// the frames of a tab (the badge and the popup's toggle depend on them).
//
// A content script runs in every frame AltCap may access (the top frame is frameId 0), and
// each one counts only its own document's images: the badge and the popup show the sums.

// unsure: images that got no confident description (the server did not believe its caption);
// suspect: images whose author's alt AltCap noted as possibly not matching (the opt-in check)
const ZERO = Object.freeze({ found: 0, described: 0, failed: 0, unsure: 0, suspect: 0 });

function cleanCounts(counts) {
  const out = {};
  for (const key of Object.keys(ZERO)) {
    const n = counts && counts[key];
    out[key] = Number.isInteger(n) && n >= 0 ? n : 0;
  }
  return out;
}

export class TabFrames {
  constructor() {
    this.tabs = new Map(); // tabId -> {hidden: bool, frames: Map(frameId -> counts)}
  }

  /** Rebuild from toJSON()'s output (anything malformed is dropped). */
  static fromJSON(json) {
    const state = new TabFrames();
    if (!json || typeof json !== "object") return state;
    for (const [tabKey, tab] of Object.entries(json)) {
      const tabId = Number(tabKey);
      if (!Number.isInteger(tabId) || !tab || typeof tab !== "object") continue;
      const entry = state.tab(tabId);
      entry.hidden = tab.hidden === true;
      for (const [frameKey, counts] of Object.entries(tab.frames || {})) {
        const frameId = Number(frameKey);
        if (Number.isInteger(frameId) && frameId >= 0) entry.frames.set(frameId, cleanCounts(counts));
      }
    }
    return state;
  }

  /** A plain object for chrome.storage.session. */
  toJSON() {
    const out = {};
    for (const [tabId, tab] of this.tabs) {
      out[tabId] = { hidden: tab.hidden, frames: Object.fromEntries(tab.frames) };
    }
    return out;
  }

  tab(tabId) {
    let entry = this.tabs.get(tabId);
    if (!entry) {
      entry = { hidden: false, frames: new Map() };
      this.tabs.set(tabId, entry);
    }
    return entry;
  }

  /** A content script started in a frame (a new document there): it counts from zero. */
  hello(tabId, frameId) {
    this.tab(tabId).frames.set(frameId, { ...ZERO });
  }

  setCounts(tabId, frameId, counts) {
    this.tab(tabId).frames.set(frameId, cleanCounts(counts));
  }

  /** The frame is gone (it stopped answering). */
  removeFrame(tabId, frameId) {
    const entry = this.tabs.get(tabId);
    if (entry) entry.frames.delete(frameId);
  }

  /** The tab started loading a page: counts start again and descriptions show again. The
   * frame ids are kept, since the same documents may still be there (a same-document
   * navigation also reports "loading"); frames that are gone are dropped when they no longer
   * answer. */
  newPage(tabId) {
    const entry = this.tabs.get(tabId);
    if (!entry) return;
    entry.hidden = false;
    for (const frameId of entry.frames.keys()) entry.frames.set(frameId, { ...ZERO });
  }

  /** The tabs with frames that run the content script (a setting change reaches them). */
  tabIds() {
    return [...this.tabs.keys()].filter((tabId) => this.tabs.get(tabId).frames.size > 0);
  }

  closeTab(tabId) {
    this.tabs.delete(tabId);
  }

  /** The frames to talk to: the top frame first (it may run the content script without
   * having said hello yet, e.g. injected a moment ago), then the others in order. */
  frameIds(tabId) {
    const entry = this.tabs.get(tabId);
    const others = entry ? [...entry.frames.keys()].filter((id) => id !== 0).sort((a, b) => a - b) : [];
    return [0, ...others];
  }

  totals(tabId) {
    const sum = { ...ZERO };
    const entry = this.tabs.get(tabId);
    if (!entry) return sum;
    for (const counts of entry.frames.values()) {
      for (const key of Object.keys(sum)) sum[key] += counts[key];
    }
    return sum;
  }

  isHidden(tabId) {
    const entry = this.tabs.get(tabId);
    return Boolean(entry && entry.hidden);
  }

  setHidden(tabId, hidden) {
    this.tab(tabId).hidden = Boolean(hidden);
  }
}

/** The popup's view of a tab from each frame's "status" answer (null: no answer). Counts are
 * summed; "showing" is the top frame's when it answered (it is what the user looks at). */
export function combineStatus(answers) {
  const live = answers.filter((a) => a && typeof a === "object");
  if (!live.length) return null;
  const top = answers[0] && typeof answers[0] === "object" ? answers[0] : null;
  const sum = { ...ZERO };
  for (const a of live) for (const key of Object.keys(sum)) sum[key] += Number(a[key]) || 0;
  return {
    running: live.some((a) => a.running === true),
    showing: top ? top.showing !== false : live.every((a) => a.showing !== false),
    consented: live.some((a) => a.consented === true),
    frames: live.length,
    ...sum,
  };
}
