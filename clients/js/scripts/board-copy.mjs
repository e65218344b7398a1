// Copies the built bundle (dist/index.js) to board/flarecast.js, the copy
// the live board embeds (board/board.go). `npm test` checks that the
// committed copy equals a fresh build.
import { copyFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const from = path.join(here, '..', 'dist', 'index.js');
const to = path.join(here, '..', '..', '..', 'board', 'flarecast.js');
copyFileSync(from, to);
console.log(`copied ${path.relative(process.cwd(), from)} to ${path.relative(process.cwd(), to)}`);
