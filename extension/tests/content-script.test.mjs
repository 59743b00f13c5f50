// content-script.js in a fake page: finds the right images, sends one batch, writes
// "prefix + caption" with data-altcap, toggles back to the exact page, follows DOM changes,
// and never throws when the service worker is gone.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { setTimeout as sleep } from "node:timers/promises";

import { EXTENSION_DIR, FakeDocument, FakeElement, WORDS, img } from "./fake-dom.mjs";

const RUNTIME_ID = "altcap-test";
const code = (name) => fs.readFileSync(path.join(EXTENSION_DIR, name), "utf8");

/** A page with the content script injected. `worker(message)` plays the service worker. */
function page({ elements = [], worker, auto = true } = {}) {
  const document = new FakeDocument();
  for (const el of elements) document.add(el);
  const sent = [];
  let onMessage = null;
  const observers = { mutation: [], intersection: [] };
  const chrome = {
    runtime: {
      id: RUNTIME_ID,
      async sendMessage(message) {
        sent.push(message);
        if (message.type === "hello") {
          return { consented: true, enabled: true, auto, prefix: "Appears to be: ", words: WORDS };
        }
        return worker ? worker(message) : { ok: true };
      },
      onMessage: { addListener: (fn) => (onMessage = fn) },
    },
  };
  const context = vm.createContext({
    chrome,
    document,
    setTimeout,
    clearTimeout,
    getComputedStyle: () => ({ visibility: "visible" }),
    MutationObserver: class {
      constructor(callback) {
        this.callback = callback;
        observers.mutation.push(this);
      }
      observe() {}
      disconnect() {}
    },
    IntersectionObserver: class {
      constructor(callback) {
        this.callback = callback;
        this.targets = [];
        observers.intersection.push(this);
      }
      observe(el) {
        this.targets.push(el);
      }
      disconnect() {}
    },
  });
  context.window = context;
  vm.runInContext(code("detection.js"), context);
  vm.runInContext(code("content-script.js"), context);

  /** Send a message as the extension would (sender.id = ours unless given). */
  function message(msg, senderId = RUNTIME_ID) {
    return new Promise((resolve) => {
      const async = onMessage(msg, { id: senderId }, resolve);
      if (async !== true) setTimeout(() => resolve(undefined), 0);
    });
  }
  return { document, sent, message, observers, context, inject: () => vm.runInContext(code("content-script.js"), context) };
}

const captionEach = (message) => ({
  results: message.images.map((image) => ({ id: image.id, caption: `A picture of ${image.url.split("/").pop()}.` })),
});

const describes = (sent) => sent.filter((m) => m.type === "describe");

test("describes missing and meaningless alts only, in one batch", async () => {
  const none = img({ src: "https://example.com/cat.jpg" });
  const meaningless = img({ src: "https://example.com/dog.jpg", alt: "image" });
  const author = img({ src: "https://example.com/team.jpg", alt: "The team in Lisbon" });
  const decorative = img({ src: "https://example.com/rule.png", alt: "" });
  const tiny = img({ src: "https://example.com/icon.png" }, { rect: { width: 12, height: 12 } });
  const hidden = img({ src: "https://example.com/h.png", "aria-hidden": "true" });
  const p = page({ elements: [none, meaningless, author, decorative, tiny, hidden], worker: captionEach });
  await sleep(120);

  const batches = describes(p.sent);
  assert.equal(batches.length, 1);
  assert.deepEqual(Array.from(batches[0].images, (i) => i.url), ["https://example.com/cat.jpg", "https://example.com/dog.jpg"]);

  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(none.getAttribute("data-altcap"), "__none__");
  assert.equal(meaningless.getAttribute("alt"), "Appears to be: A picture of dog.jpg.");
  assert.equal(meaningless.getAttribute("data-altcap"), "image");
  for (const el of [author, decorative, tiny, hidden]) assert.equal(el.hasAttribute("data-altcap"), false);
  assert.equal(author.getAttribute("alt"), "The team in Lisbon");

  const status = await p.message({ type: "status" });
  assert.deepEqual({ ...status }, { running: true, showing: true, consented: true, found: 2, described: 2, failed: 0 });
  await sleep(450);
  const counts = p.sent.filter((m) => m.type === "counts").at(-1);
  assert.deepEqual({ ...counts }, { type: "counts", found: 2, described: 2, failed: 0 });
});

test("toggle restores the page exactly, and back again without asking twice", async () => {
  const none = img({ src: "https://example.com/cat.jpg" });
  const meaningless = img({ src: "https://example.com/dog.jpg", alt: "IMG_1.JPG" });
  const p = page({ elements: [none, meaningless], worker: captionEach });
  await sleep(120);

  const off = await p.message({ type: "toggle" });
  assert.equal(off.showing, false);
  assert.equal(none.hasAttribute("alt"), false);
  assert.equal(none.hasAttribute("data-altcap"), false);
  assert.equal(meaningless.getAttribute("alt"), "IMG_1.JPG");

  const on = await p.message({ type: "toggle" });
  assert.equal(on.showing, true);
  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(describes(p.sent).length, 1); // from the page's cache

  const restored = await p.message({ type: "restore" }); // the site was switched off
  assert.equal(none.hasAttribute("alt"), false);
  assert.equal(meaningless.getAttribute("alt"), "IMG_1.JPG");
  assert.equal(restored.running, false);
  assert.equal(restored.described, 0);

  await p.message({ type: "describe-now" }); // asked again: back at once, from the cache
  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(describes(p.sent).length, 1);
});

test("new images, src changes and author alt changes are followed", async () => {
  const first = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [first], worker: captionEach });
  await sleep(120);
  const [mutations] = p.observers.mutation;

  // An image added later (infinite scroll).
  const later = p.document.add(img({ src: "https://example.com/b.jpg" }));
  mutations.callback([{ type: "childList", addedNodes: [later] }]);
  await sleep(120);
  assert.equal(later.getAttribute("alt"), "Appears to be: A picture of b.jpg.");

  // The page swaps the picture: our caption goes, the new one is described once loaded.
  first.setAttribute("src", "https://example.com/c.jpg");
  first.complete = false;
  mutations.callback([{ type: "attributes", target: first, attributeName: "src" }]);
  assert.equal(first.hasAttribute("alt"), false);
  first.complete = true;
  p.document.dispatch("load", first);
  await sleep(120);
  assert.equal(first.getAttribute("alt"), "Appears to be: A picture of c.jpg.");

  // The author writes their own alt: it wins, and our mark goes.
  later.setAttribute("alt", "Sunset over the bay");
  mutations.callback([{ type: "attributes", target: later, attributeName: "alt" }]);
  assert.equal(later.getAttribute("alt"), "Sunset over the bay");
  assert.equal(later.hasAttribute("data-altcap"), false);
  await p.message({ type: "toggle" });
  assert.equal(later.getAttribute("alt"), "Sunset over the bay"); // not ours to restore
});

test("lazy images are described when they load", async () => {
  const lazy = img({ src: "https://example.com/lazy.jpg", loading: "lazy" }, { complete: false });
  const p = page({ elements: [lazy], worker: captionEach });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  lazy.complete = true;
  p.document.dispatch("load", lazy);
  await sleep(120);
  assert.equal(lazy.getAttribute("alt"), "Appears to be: A picture of lazy.jpg.");
});

test("the focused and visible images go first", async () => {
  const elements = Array.from({ length: 40 }, (_, i) => img({ src: `https://example.com/${i}.jpg` }));
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  const p = page({
    elements,
    worker: async (m) => {
      await gate;
      return captionEach(m);
    },
  });
  p.document.activeElement = elements[39];
  await sleep(5); // "hello" answered, observers attached; the batch leaves after 40 ms
  const [io] = p.observers.intersection;
  // The visible ones are reported before the batch leaves.
  io.callback([{ target: elements[35], isIntersecting: true }]);
  await sleep(120);
  release();
  const [firstBatch] = describes(p.sent);
  assert.equal(firstBatch.images.length, 32);
  assert.equal(firstBatch.images[0].url, "https://example.com/39.jpg");
  assert.equal(firstBatch.images[1].url, "https://example.com/35.jpg");
  await sleep(150);
  assert.equal(elements.filter((e) => e.hasAttribute("data-altcap")).length, 40);
});

test("failures are counted, nothing throws, and describe-now retries them", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  let down = true;
  const p = page({
    elements: [el],
    worker: async (m) => {
      if (down) throw new Error("Could not establish connection");
      return captionEach(m);
    },
  });
  await sleep(120);
  let status = await p.message({ type: "status" });
  assert.equal(status.failed, 1);
  assert.equal(el.hasAttribute("alt"), false);

  down = false;
  const answer = await p.message({ type: "describe-now" });
  assert.equal(answer.ok, true);
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  status = await p.message({ type: "status" });
  assert.equal(status.failed, 0);
  assert.equal(status.described, 1);
  // The summary is announced in a polite live region.
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.ok(live);
  assert.equal(live.getAttribute("aria-live"), "polite");
  assert.match(live.textContent, /AltCap: 1 image described/);
});

test("on-demand pages wait for describe-now", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  await p.message({ type: "describe-now" });
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
});

test("context menu: caption one image, write it, announce it", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  p.document.dispatch("contextmenu", el);
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/a.jpg" });
  assert.equal(answer.caption, "A picture of a.jpg.");
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "Appears to be: A picture of a.jpg.");

  // Author text is announced but never overwritten.
  const kept = p.document.add(img({ src: "https://example.com/k.jpg", alt: "Our CEO" }));
  await p.message({ type: "describe-target", srcUrl: "https://example.com/k.jpg" });
  assert.equal(kept.getAttribute("alt"), "Our CEO");
});

test("messages from elsewhere are ignored; injecting twice is harmless", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  assert.equal(await p.message({ type: "describe-now" }, "another-extension"), undefined);
  assert.equal(await p.message({ type: "unknown" }), undefined);
  assert.doesNotThrow(() => p.inject());
  await sleep(50);
  assert.equal(p.sent.filter((m) => m.type === "hello").length, 1);
});

test("a content script whose extension is gone stays quiet", async () => {
  const document = new FakeDocument();
  document.add(img());
  const context = vm.createContext({
    document,
    setTimeout,
    clearTimeout,
    chrome: {
      runtime: {
        id: RUNTIME_ID,
        sendMessage() {
          throw new Error("Extension context invalidated.");
        },
        onMessage: { addListener() {} },
      },
    },
  });
  context.window = context;
  vm.runInContext(code("detection.js"), context);
  assert.doesNotThrow(() => vm.runInContext(code("content-script.js"), context));
  await sleep(50);
});
