//! Loads PTX files and lists their kernels: `cargo run --example load -- file.ptx ...`.
use freelunch_ptx::{Device, DeviceConfig, RunOptions};

fn main() {
    let dev = Device::new(DeviceConfig::h200(1 << 30), RunOptions::default());
    for path in std::env::args().skip(1) {
        let text = std::fs::read_to_string(&path).expect("read");
        let t = std::time::Instant::now();
        match dev.load_module(&text) {
            Ok(m) => {
                let insts: usize = m.kernels.values().map(|k| k.code.len()).sum();
                let regs: usize = m
                    .kernels
                    .values()
                    .map(|k| (k.n32 + k.n64) as usize)
                    .max()
                    .unwrap_or(0);
                println!(
                    "{path}: {} kernels, {insts} instructions, max {regs} slots, {:?}",
                    m.kernels.len(),
                    t.elapsed()
                );
            }
            Err(e) => println!("{path}: {e}"),
        }
    }
}
