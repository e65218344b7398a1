//go:build !race

package main

const e2eRace = false
