//! TEMP stub until the bench branch lands.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    pub url: String,
}
pub fn run(_a: BenchArgs) -> i32 {
    2
}
