// The live board embeds a committed copy of the bundle (board/flarecast.js,
// board/board.go): it must be the bundle this build produced.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { here, repo } from './harness.mjs';

test('board/flarecast.js equals a fresh build (npm run board refreshes it)', () => {
  const built = readFileSync(path.join(here, '..', 'dist', 'index.js'), 'utf8');
  const committed = readFileSync(path.join(repo, 'board', 'flarecast.js'), 'utf8');
  assert.ok(committed === built, 'board/flarecast.js differs from dist/index.js: run `npm run board` in clients/js and commit board/flarecast.js');
  assert.ok(!/<\/script/i.test(built), 'the board inlines the bundle in a <script>: it must not contain </script');
  assert.ok(!/https?:\/\//.test(built), 'the board page must not refer to another site');
});
