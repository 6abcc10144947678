//! Benchmark support for tapyard; the benchmarks themselves live in `benches/`.
