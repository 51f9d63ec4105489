//! Holds: `hold place`, `hold cancel`, `hold list`. The API checks every
//! field and applies every rule; these only send and show.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    error::Failure,
    http::{Api, segment},
    library::Book,
    output::{self, Output},
};

pub async fn place(
    api: &Api,
    out: Output,
    book: &Book,
    patron: &str,
    branch: &str,
) -> Result<(), Failure> {
    let mut body = json!({ "patron": patron, "pickup_branch": branch });
    match book {
        Book::Isbn(isbn) => body["isbn"] = json!(isbn),
        Book::Title(title) => body["title"] = json!(title),
    }
    let hold = api.post("/v1/holds", &body).await?.body;
    if out.json(&hold) {
        return Ok(());
    }
    println!(
        "placed hold {}  on {} for {}: number {} in the queue",
        output::text(&hold["id"]),
        output::short_json(&hold["title"], 40),
        output::text(&hold["patron"]),
        output::text(&hold["position"])
    );
    output::fields(&[
        ("isbn", output::text(&hold["isbn"])),
        ("pickup at", output::text(&hold["pickup_branch"])),
    ]);
    Ok(())
}

pub async fn cancel(api: &Api, out: Output, id: &str, patron: Option<&str>) -> Result<(), Failure> {
    let mut req = api.request(Method::DELETE, &format!("/v1/holds/{}", segment(id)));
    if let Some(p) = patron {
        req = req.query(&[("patron", p)]);
    }
    let answer = api.json(req).await?.body;
    if out.json(&answer) {
        return Ok(());
    }
    let hold = &answer["hold"];
    println!(
        "{} hold {}  on {} for {}",
        if answer["already_cancelled"] == true {
            "already cancelled:"
        } else {
            "cancelled"
        },
        output::text(&hold["id"]),
        output::short_json(&hold["title"], 40),
        output::text(&hold["patron"])
    );
    let passed = &answer["passed_to"];
    if !passed.is_null() {
        println!(
            "copy {} now waits on the hold shelf at {} for {}",
            output::text(&passed["copy"]),
            output::text(&passed["pickup_branch"]),
            output::text(&passed["patron"])
        );
    }
    Ok(())
}

pub async fn patron(api: &Api, out: Output, patron: &str, all: bool) -> Result<(), Failure> {
    let mut req = api.request(
        Method::GET,
        &format!("/v1/patrons/{}/holds", segment(patron)),
    );
    if all {
        req = req.query(&[("all", "true")]);
    }
    let holds = api.json(req).await?.body;
    if out.json(&holds) {
        return Ok(());
    }
    let n = each(&holds["holds"]).count();
    println!(
        "{}: {n} hold{}",
        output::text(&holds["patron"]),
        if n == 1 { "" } else { "s" }
    );
    table(&holds["holds"]);
    Ok(())
}

pub async fn title(api: &Api, out: Output, isbn: &str) -> Result<(), Failure> {
    let holds = api
        .get(&format!("/v1/titles/{}/holds", segment(isbn)))
        .await?;
    if out.json(&holds) {
        return Ok(());
    }
    let n = each(&holds["holds"]).count();
    println!(
        "{}: {n} open hold{}",
        output::text(&holds["isbn"]),
        if n == 1 { "" } else { "s" }
    );
    table(&holds["holds"]);
    Ok(())
}

/// One row per hold: where it stands and what it waits for.
fn table(holds: &Value) {
    let rows: Vec<Vec<String>> = each(holds)
        .map(|h| {
            vec![
                output::text(&h["id"]),
                output::text(&h["isbn"]),
                output::short_json(&h["title"], 30),
                output::text(&h["patron"]),
                output::text(&h["pickup_branch"]),
                output::text(&h["state"]),
                output::text(&h["position"]),
                output::text(&h["copy"]),
                output::when(&h["pickup_by"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(
            &[
                "ID",
                "ISBN",
                "TITLE",
                "PATRON",
                "PICKUP AT",
                "STATE",
                "PLACE",
                "COPY",
                "PICK UP BY",
            ],
            &rows,
        );
    }
}

fn each(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}
