fn main() {
    // sqlx::migrate! embeds the migrations: a new or changed file must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
}
