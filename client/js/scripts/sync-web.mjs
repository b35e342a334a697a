// Copies the built package into client/web/js/iceway/, where the pages import it without a
// build step of their own (iceway dev and the signal image serve client/web as plain files).
// scripts/test-js.sh checks that the copy matches a fresh build.
import { cpSync, rmSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dest = path.resolve(pkg, '..', 'web', 'js', 'iceway');
rmSync(dest, { recursive: true, force: true });
mkdirSync(dest, { recursive: true });
cpSync(path.join(pkg, 'dist'), dest, { recursive: true, filter: (src) => !src.endsWith('.d.ts') });
