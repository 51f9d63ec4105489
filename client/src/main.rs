//! `bibliomq`: see the library crate for what it does.

#[tokio::main]
async fn main() {
    let code = bibliomq_client::main_with_args(std::env::args()).await;
    // exit() skips destructors: make sure everything printed got out.
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}
