// Package bench holds flarecast's cross-package benchmarks. It has no code of
// its own: everything lives in its _test.go files, so that
//
//	go test -run '^$' -bench . -benchmem ./bench/
//
// measures the hot paths against realistic workloads without those
// workloads' generators leaking into the packages they measure.
//
// One benchmark lives elsewhere because it needs the engine's internals:
// the end-to-end pipeline, from an ingest line to frames queued for 10,000
// sessions, with each stage (parse, ring, match, encode, enqueue) timed
// alone, is BenchmarkPipeline and BenchmarkPipelineStages in package engine
// (engine/pipeline_bench_test.go). `make bench` runs both:
//
//	go test -run '^$' -bench Pipeline -benchmem ./engine/
package bench
