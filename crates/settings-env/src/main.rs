//! `settings-env`: prints, as JSON, every environment variable each service
//! reads, its default, and whether a deployment must set it (see the
//! library). Used by scripts/validate-deploy.

fn main() -> Result<(), serde_json::Error> {
    println!(
        "{}",
        serde_json::to_string_pretty(&signalbox_settings_env::all()?)?
    );
    Ok(())
}
