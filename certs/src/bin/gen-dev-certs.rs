//! Writes a development CA and a server certificate signed by it as PEM
//! files (ca.pem, cert.pem, key.pem). Clients trust ca.pem.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Directory to write into.
    #[arg(long, default_value = "certs/dev")]
    out: PathBuf,
    /// Names (DNS or IP) the server certificate is valid for.
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1", "::1"])]
    names: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let certs = certs::DevCerts::generate(&args.names)?;
    certs.write_pem(&args.out)?;
    println!(
        "wrote {0}/ca.pem, {0}/cert.pem and {0}/key.pem for {1}",
        args.out.display(),
        args.names.join(", ")
    );
    Ok(())
}
