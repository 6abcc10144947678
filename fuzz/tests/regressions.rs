//! Replays every kept fuzz input through its harness in a plain `cargo test`
//! (no AFL needed): `regressions/<target>/*` are inputs that once crashed
//! or hung a target (each fixed since), `seeds/<target>/*` the starting
//! corpus. A regression is forever (STYLE §11).

use std::path::Path;

fn replay(dir: &str) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut n = 0;
    for (name, run) in tapyard_fuzz::TARGETS {
        let Ok(rd) = std::fs::read_dir(root.join(name)) else { continue };
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).expect("a kept input reads");
            eprintln!("replaying {}", f.display());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn every_kept_crasher_runs_clean() {
    replay("regressions");
}

#[test]
fn every_seed_runs_clean() {
    assert!(replay("seeds") > 0, "the seed corpus is missing");
}

#[test]
fn every_target_survives_empty_and_junk_input() {
    for (name, run) in tapyard_fuzz::TARGETS {
        eprintln!("{name}");
        run(&[]);
        run(&[0xff; 300]);
        run(&(0..=255u8).cycle().take(5000).collect::<Vec<_>>());
    }
}
