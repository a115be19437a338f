#!/usr/bin/env node
// Validates an AsyncAPI document with the official parser (@asyncapi/parser,
// pinned in package.json): `node tools/asyncapi/validate.mjs FILE`.
//
// Exits 0 when the parser accepts the document (warnings are printed but do
// not fail it), 1 with every diagnostic printed when it has errors, 2 on a
// usage or read problem. `eventhost catalog --asyncapi` writes the documents
// this checks; the catalog's integration test runs it on the examples.

import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

// Spectral's severities, as the parser reports them.
const SEVERITY = ["error", "warning", "info", "hint"];

async function main(argv) {
  if (argv.length !== 1) {
    console.error("usage: node validate.mjs FILE");
    return 2;
  }
  const [file] = argv;
  let text;
  try {
    text = await readFile(file, "utf8");
  } catch (error) {
    console.error(`reading ${file}: ${error.message}`);
    return 2;
  }
  const { document, diagnostics } = await new Parser().parse(text, { source: file });
  for (const diagnostic of diagnostics) {
    const severity = SEVERITY[diagnostic.severity] ?? `severity ${diagnostic.severity}`;
    const where = diagnostic.path.length ? `/${diagnostic.path.join("/")}` : "(document)";
    console.error(`${severity}: ${where}: ${diagnostic.message} [${diagnostic.code}]`);
  }
  // The parser returns no document when any diagnostic is an error.
  const errors = diagnostics.filter((d) => d.severity === 0).length;
  if (document === undefined || errors > 0) {
    console.error(`${file}: not a valid AsyncAPI document (${errors} errors)`);
    return 1;
  }
  const version = document.version();
  console.log(`${file}: valid AsyncAPI ${version} (${diagnostics.length} warnings or notes)`);
  return 0;
}

process.exitCode = await main(process.argv.slice(2));
