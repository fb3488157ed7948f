//! `bosun coordinator project badge-token`: a new badge token for a project's status badges,
//! printed once (the store keeps its digest) with the README's Markdown.

use super::{DataArg, Result};

#[derive(clap::Args, Debug)]
pub struct BadgeTokenArgs {
    #[command(flatten)]
    pub data: DataArg,
    #[arg(long)]
    pub slug: String,
}

pub fn badge_token(a: BadgeTokenArgs, print: &mut dyn FnMut(String)) -> Result<()> {
    let store = a.data.open()?;
    let token = crate::text::random_hex(20)?;
    store.set_badge_token_digest(&a.slug, &crate::sha256_hex(token.as_bytes()))?;
    let url = store
        .recorded_public_url()?
        .unwrap_or_else(|| "https://COORDINATOR".to_owned());
    print(format!("badge token: {token}"));
    print(crate::pages::badge::markdown(&url, &a.slug, false, &token));
    Ok(())
}
