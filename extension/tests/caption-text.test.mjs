// caption-text.js: altText against the shared vectors (captioner/alttext.py alt_text passes the
// same file), and what the content script writes and announces when a server answers a
// 5,000-character caption full of bidi controls and zero-width characters (issue 20,
// finding 7: before the fix it was written whole as alt, U+202E included).

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

import { EXTENSION_DIR, FakeDocument, WORDS, ariaImage, img } from "./fake-dom.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const VECTORS = JSON.parse(fs.readFileSync(path.join(here, "../../tests/vectors/caption-text.json"), "utf8"));
const code = (name) => fs.readFileSync(path.join(EXTENSION_DIR, name), "utf8");

function loadCaptionText(context = vm.createContext({})) {
  vm.runInContext(code("caption-text.js"), context, { filename: "caption-text.js" });
  return context.AltCapCaptionText;
}

const T = loadCaptionText();
const RUNTIME_ID = "altcap-test";
const PREFIX = "Appears to be: ";
// What a server that is not AltCap's own code can send: 5,000 characters, a right-to-left
// override that shows "gpj.exe" as "exe.jpg", zero-width characters between words.
const HOSTILE = "\u202einvoice gpj.exe\u202c a\u200b dog\u2060 \ufeffon a couch " + "and a dog ".repeat(500);
const INVISIBLE = /[\u200b\u200e\u200f\u202a-\u202e\u2060-\u2069\ufeff\u00ad\u061c\p{Cc}]/u;
const codePoints = (s) => [...s].length;

test("every shared vector gets the Python alt text", () => {
  assert.ok(VECTORS.cases.length > 40);
  for (const c of VECTORS.cases) {
    const text = c.text.repeat(c.repeat ?? 1);
    assert.equal(T.altText(text, c.max_chars ?? VECTORS.max_alt_chars), c.alt, c.note);
  }
});

test("the extension's own cap is the service's default", () => {
  assert.equal(T.MAX_ALT_CHARS, VECTORS.max_alt_chars);
  assert.equal(T.altText("a dog ".repeat(1000)), VECTORS.cases.find((c) => c.repeat === 1000).alt);
  assert.throws(() => T.boundText("abc", 1), { name: "RangeError" }); // another realm's class
});

test("any text comes out bounded, visible and stable", () => {
  const pieces = [" ", "\t", "\n", "a", "é", "\u0301", "\u200c", "\u200d", "\u200b", "\u202e", "\ufeff", "\ud800", "\udfff",
    ",", "…", "\u{1f1eb}", "\u{1f1f7}", "\u{1f44d}", "\u{1f3fd}", "\u{1f469}", "\u{1f4bb}", "\ufe0f", "\u{e0067}", "猫", "word"];
  let seed = 7;
  const next = (n) => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  for (let i = 0; i < 3000; i++) {
    let text = "";
    for (let k = next(60); k > 0; k--) text += pieces[next(pieces.length)];
    const max = 2 + next(40);
    const alt = T.altText(text, max);
    assert.ok(codePoints(alt) <= max, JSON.stringify([text, max, alt]));
    assert.ok(!INVISIBLE.test(alt) && !/\p{Cs}/u.test(alt), JSON.stringify([text, alt]));
    assert.equal(T.altText(alt, max), alt, JSON.stringify([text, max]));
  }
});

test("cleanAnswer: every caption of a describe answer, nothing else", () => {
  const hello = { consented: true, prefix: PREFIX };
  assert.equal(T.cleanAnswer(hello), hello);
  assert.equal(T.cleanAnswer(null), null);
  const error = { id: "b", error: { code: "fetch_failed", message: "x" } };
  const answer = T.cleanAnswer({ results: [{ id: "a", caption: HOSTILE, language: "en" }, error, null] });
  assert.equal(answer.results[0].caption, T.altText(HOSTILE));
  assert.ok(codePoints(answer.results[0].caption) <= 250);
  assert.equal(answer.results[0].language, "en");
  assert.equal(answer.results[1], error);
  assert.equal(answer.results[2], null);
  assert.equal(T.cleanAnswer({ results: [{ id: "a", caption: "\u202e\u200b" }] }).results[0].caption, "");
});

test("cleanResult: the alt is cleaned like a caption, and the caption stands in for a missing one", () => {
  // issue 22: an alt from the server goes through the same rule as a caption.
  const text = T.cleanResult({ id: "a", caption: "a sign", alt: "\u202eSALE\u200b 50% OFF", alt_from: "text", text: "SALE\n50% OFF" });
  assert.deepEqual({ ...text }, { id: "a", caption: "a sign", alt: "SALE 50% OFF", alt_from: "text", text: "SALE\n50% OFF" });
  const long = T.cleanResult({ id: "a", caption: "a sign", alt: HOSTILE, alt_from: "caption_and_text" });
  assert.equal(long.alt, T.altText(HOSTILE));
  assert.ok(codePoints(long.alt) <= 250 && !INVISIBLE.test(long.alt));
  assert.equal(long.alt_from, "caption_and_text");
  // No alt (an older server), one that is no string, or one with nothing readable: the caption.
  for (const alt of [undefined, null, 3, ["SALE"], "", "\u202e\u200b "]) {
    const r = T.cleanResult({ id: "a", caption: HOSTILE, alt, alt_from: "text" });
    assert.equal(r.alt, T.altText(HOSTILE), JSON.stringify(alt));
    assert.equal(r.caption, T.altText(HOSTILE));
    assert.equal(r.alt_from, "caption", JSON.stringify(alt)); // and marked as one
  }
  // An alt_from this extension does not know: marked as a caption.
  assert.equal(T.cleanResult({ caption: "x", alt: "y", alt_from: "ocr" }).alt_from, "caption");
  // A text alone (the model found no words): still a description; nothing at all: none.
  assert.deepEqual({ ...T.cleanResult({ alt: "EXIT", alt_from: "text" }) }, { caption: "", alt: "EXIT", alt_from: "text" });
  assert.equal(T.cleanResult({ caption: "\u200b", alt: "\u2060" }).alt, "");
  const error = { id: "b", error: { code: "fetch_failed", message: "x" } };
  assert.equal(T.cleanResult(error), error);
});

test("prefixFor: 'Appears to say' before an image's own text, 'Appears to be' otherwise", () => {
  const prefixes = { prefix: PREFIX, textPrefix: "Appears to say: " };
  assert.equal(T.prefixFor(prefixes, "text"), "Appears to say: ");
  assert.equal(T.prefixFor(prefixes, "caption"), PREFIX);
  assert.equal(T.prefixFor(prefixes, "caption_and_text"), PREFIX); // its alt names the text itself
  assert.equal(T.prefixFor(prefixes, undefined), PREFIX);
  assert.equal(T.prefixFor({ ...prefixes, textPrefix: "" }, "text"), ""); // the user wants none
  assert.equal(T.prefixFor({ prefix: PREFIX }, "text"), PREFIX); // no text prefix known
});

test("holdsText: the alts a thin banner may get hold the image's own text", () => {
  assert.equal(T.holdsText("text"), true);
  assert.equal(T.holdsText("caption_and_text"), true);
  for (const other of ["caption", undefined, null, "", "TEXT", "ocr"]) assert.equal(T.holdsText(other), false, String(other));
});

test("caption-text.js can be injected twice into one world", () => {
  const context = vm.createContext({});
  loadCaptionText(context);
  assert.doesNotThrow(() => loadCaptionText(context));
});

/** A page with the three scripts injected as the service worker injects them; `caption`
 * is what the "server" answers for every image (a string, or the whole result). */
function page(elements, caption) {
  const result = typeof caption === "string" ? { caption } : caption;
  const document = new FakeDocument();
  for (const el of elements) document.add(el);
  let onMessage = null;
  const chrome = {
    runtime: {
      id: RUNTIME_ID,
      async sendMessage(message) {
        if (message.type === "hello") return { consented: true, enabled: true, auto: true, prefix: PREFIX, textPrefix: "Appears to say: ", words: WORDS };
        if (message.type === "describe") return { results: message.images.map((i) => ({ id: i.id, ...result })) };
        return { ok: true };
      },
      onMessage: { addListener: (fn) => (onMessage = fn) },
    },
  };
  const observer = class {
    observe() {}
    disconnect() {}
  };
  const context = vm.createContext({
    chrome,
    document,
    setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
    clearTimeout,
    getComputedStyle: () => ({ visibility: "visible" }),
    MutationObserver: observer,
    IntersectionObserver: observer,
  });
  context.window = context;
  for (const file of ["detection.js", "caption-text.js", "content-script.js"]) vm.runInContext(code(file), context);
  const message = (msg) =>
    new Promise((resolve) => {
      if (onMessage(msg, { id: RUNTIME_ID }, resolve) !== true) setTimeout(() => resolve(undefined), 0);
    });
  return { document, message };
}

test("a 5,000-character caption with U+202E and zero-width characters is written bounded and clean", async () => {
  const photo = img({ src: "https://example.com/photo.jpg" });
  const hero = ariaImage();
  page([photo, hero], HOSTILE);
  await sleep(150);
  const expected = PREFIX + T.altText(HOSTILE);
  for (const [el, attr] of [
    [photo, "alt"],
    [hero, "aria-label"],
  ]) {
    const written = el.getAttribute(attr);
    assert.equal(written, expected, attr);
    assert.ok(codePoints(written) <= PREFIX.length + 250 && written.endsWith("\u2026"), attr);
    assert.ok(!INVISIBLE.test(written), attr);
    assert.ok(written.startsWith(PREFIX + "invoice gpj.exe a dog on a couch and a dog"), attr);
  }
});

test("'Describe this image' announces the bounded caption too", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page([el], HOSTILE);
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/a.jpg" });
  assert.equal(answer.caption, T.altText(HOSTILE));
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, PREFIX + T.altText(HOSTILE));
});

test("a caption of nothing but invisible characters is no caption: nothing is written", async () => {
  const photo = img({ src: "https://example.com/photo.jpg" });
  page([photo], "\u202e\u200b\u2060\ufeff \u00ad");
  await sleep(150);
  assert.equal(photo.hasAttribute("alt"), false);
  assert.equal(photo.hasAttribute("data-altcap"), false);
});

test("an image of text is written and announced with its text, bounded and clean", async () => {
  const banner = img({ src: "https://example.com/sale.png" });
  const hero = ariaImage();
  const p = page([banner, hero], { caption: "a sign", text: "SALE\n50% OFF", alt: "SALE\u200b 50% OFF\u202e", alt_from: "text" });
  await sleep(150);
  assert.equal(banner.getAttribute("alt"), "Appears to say: SALE 50% OFF");
  assert.equal(hero.getAttribute("aria-label"), "Appears to say: SALE 50% OFF");
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/sale.png" });
  assert.equal(answer.alt, "SALE 50% OFF");
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "Appears to say: SALE 50% OFF");
});

test("a picture with text keeps 'Appears to be'; an alt with nothing readable falls back to the caption", async () => {
  const shop = img({ src: "https://example.com/shop.jpg" });
  page([shop], { caption: "A shop window.", text: "Summer sale", alt: "A shop window. Appears to say: Summer sale", alt_from: "caption_and_text" });
  await sleep(150);
  assert.equal(shop.getAttribute("alt"), PREFIX + "A shop window. Appears to say: Summer sale");

  const photo = img({ src: "https://example.com/photo.jpg" });
  page([photo], { caption: "A dog on a couch.", alt: "\u202e\u200b", alt_from: "text" });
  await sleep(150);
  assert.equal(photo.getAttribute("alt"), PREFIX + "A dog on a couch.");
});

test("withholds: an alt that rests on a caption the server does not believe (trust.py withholds)", () => {
  // issue 23: confident === false and alt_from !== "text" -> nothing is written.
  assert.equal(T.withholds({ alt: "A dog.", alt_from: "caption", confident: false }), true);
  assert.equal(T.withholds({ alt: "A shop. Appears to say: Sale", alt_from: "caption_and_text", confident: false }), true);
  assert.equal(T.withholds({ alt: "SALE", alt_from: "text", confident: false }), false); // the image's own text
  assert.equal(T.withholds({ alt: "A dog.", alt_from: "caption", confident: true }), false);
  // No confidence at all (no text tower, or not AltCap): written as before.
  assert.equal(T.withholds({ alt: "A dog.", alt_from: "caption" }), false);
  assert.equal(T.withholds({ alt: "A dog.", alt_from: "caption", confident: "false" }), false);
  assert.equal(T.withholds(null), false);
  // cleanResult keeps the fields the worker passed on.
  const cleaned = T.cleanResult({ id: "i1", caption: "A dog.", alt: "A dog.", alt_from: "caption", confidence: 0.2, confident: false });
  assert.equal(cleaned.confident, false);
  assert.equal(T.withholds(cleaned), true);
});

test("mismatchNote: what a suspect author's alt gets beside it, and only that", () => {
  const caption = "A red circle on a white background.";
  assert.equal(T.mismatchNote({ verdict: "suspect", caption }), `AltCap: the description may not match; appears to be: ${caption}`);
  assert.equal(T.mismatchNote({ verdict: "suspect", caption, confident: true }), `AltCap: the description may not match; appears to be: ${caption}`);
  // A caption the server does not believe either is not offered; the doubt still is.
  assert.equal(T.mismatchNote({ verdict: "suspect", caption, confident: false }), "AltCap: the description may not match.");
  assert.equal(T.mismatchNote({ verdict: "suspect", caption: "\u202e\u200b" }), "AltCap: the description may not match.");
  // The caption goes through the same rule as any (no bidi controls, bounded).
  assert.equal(T.mismatchNote({ verdict: "suspect", caption: "A \u202edog." }), "AltCap: the description may not match; appears to be: A dog.");
  for (const other of [{ verdict: "matches", caption }, { verdict: null }, { verdict: "SUSPECT", caption }, null, undefined]) {
    assert.equal(T.mismatchNote(other), "", JSON.stringify(other));
  }
});
