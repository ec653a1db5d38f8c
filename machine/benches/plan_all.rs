//! Plan every machine type of the built-in catalog with default options, many times, and
//! report the median time for all of them (target: under 5 ms in one process).
//!
//! Run with `cargo bench -p machine` (optionally `-- ROUNDS`).

use machine::{Catalog, PlanRequest};
use std::time::{Duration, Instant};

fn plan_all(catalog: &Catalog) -> usize {
    let mut functions = 0;
    for m in catalog.machine_types() {
        let plan = catalog
            .plan(&PlanRequest::new(&m.name))
            .unwrap_or_else(|e| panic!("{}: {e}", m.name));
        functions += plan.pci.len();
    }
    functions
}

fn main() {
    let t0 = Instant::now();
    let catalog = Catalog::builtin();
    let load = t0.elapsed();
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    // Warm up.
    let functions = plan_all(catalog);
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(plan_all(catalog));
            t.elapsed()
        })
        .collect();
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "plan_all: {} machine types, {} PCI functions, catalog load {:?}, median {:?} (min {:?}, max {:?}) over {} rounds",
        catalog.machine_types().len(),
        functions,
        load,
        median,
        times[0],
        times[times.len() - 1],
        rounds
    );
    println!(
        "plan_all median total: {:.3} ms",
        median.as_secs_f64() * 1e3
    );
}
