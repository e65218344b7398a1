// Package bench holds flarecast's cross-package benchmarks. It has no code of
// its own: everything lives in its _test.go files, so that
//
//	go test -run '^$' -bench . -benchmem ./bench/
//
// measures the hot paths against realistic workloads without those
// workloads' generators leaking into the packages they measure.
package bench
