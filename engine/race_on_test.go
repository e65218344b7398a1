//go:build race

package engine_test

// raceEnabled reports whether the tests run under the race detector, which
// makes the engine several times slower: long tests scale their counts down.
const raceEnabled = true
