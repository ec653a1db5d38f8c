//! Helpers shared by the table-driven tests: a command-line-like request syntax and the
//! table file format (`REQUEST => EXPECTED`, `#` comments, blank lines ignored).

#![allow(dead_code)]

use machine::{parse_size, DeviceRequest, PlanError, PlanRequest};

/// Parse `MACHINE[,opts] [-nodefaults] [-device ARG]... [-devices N ARG] [-m SIZE] [-smp N]
/// [-maxcpus N] [-vga none|std] [-serial none|X] [-parallel none|X] [-nic none]`.
pub fn request(line: &str) -> Result<PlanRequest, PlanError> {
    let mut toks = line.split_whitespace();
    let first = toks.next().unwrap_or("");
    let mut req = if first == "-" {
        PlanRequest::default()
    } else {
        PlanRequest::default().with_machine_arg(first)
    };
    while let Some(t) = toks.next() {
        let mut arg = || {
            toks.next()
                .unwrap_or_else(|| panic!("{t} needs an argument in '{line}'"))
        };
        match t {
            "-nodefaults" => req.nodefaults = true,
            "-device" => req.devices.push(DeviceRequest::parse(arg())?),
            "-devices" => {
                let n: usize = arg().parse().expect("count");
                let d = DeviceRequest::parse(arg())?;
                req.devices.extend(std::iter::repeat_n(d, n));
            }
            "-m" => req.ram_size = parse_size(arg()).expect("size"),
            "-smp" => req.cpus = arg().parse().expect("cpus"),
            "-maxcpus" => req.max_cpus = Some(arg().parse().expect("maxcpus")),
            "-vga" => req.vga = Some(arg() != "none"),
            "-serial" => req.serial = Some(arg() != "none"),
            "-parallel" => req.parallel = Some(arg() != "none"),
            "-nic" => req.nic = Some(arg() != "none"),
            other => panic!("unknown token {other} in '{line}'"),
        }
    }
    Ok(req)
}

/// (line number, left, right) of every `left => right` row.
pub fn rows(table: &str) -> Vec<(usize, String, String)> {
    table
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| {
            let (a, b) = l
                .split_once(" => ")
                .unwrap_or_else(|| panic!("line {}: missing ' => ': {l}", i + 1));
            (i + 1, a.trim().to_string(), b.trim().to_string())
        })
        .collect()
}

/// Run `check` on every row and fail once with all mismatches listed.
pub fn run_table(name: &str, table: &str, check: impl Fn(&str, &str) -> Result<(), String>) {
    let mut failures = Vec::new();
    let rows = rows(table);
    assert!(!rows.is_empty(), "{name}: empty table");
    for (line, left, right) in &rows {
        if let Err(e) = check(left, right) {
            failures.push(format!("{name}:{line}: {left}\n    {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Compare `got` with `want` and describe the difference.
pub fn expect_eq(got: &str, want: &str) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("want: {want}\n     got:  {got}"))
    }
}
