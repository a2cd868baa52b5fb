//! The `crier-bench` command: parses [`BenchArgs`] and runs one benchmark.

use clap::Parser;

use crier_bench::BenchArgs;

/// Load generator for crier, Redis and NATS: fan-out throughput, latency, memory.
#[derive(Parser, Debug)]
#[command(name = "crier-bench", version)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("crier-bench: cannot start the runtime: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(crier_bench::run(cli.args)) {
        eprintln!("crier-bench: {error:#}");
        std::process::exit(1);
    }
}
