//go:build race

package main

// e2eRace: the tests run under the race detector, so the binary is built with it too.
const e2eRace = true
