//! Catalogue and patron administration: `title add`, `copy add|withdraw`,
//! `patron add|block|unblock|show|list`. The API checks every field; these
//! only send and show.

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::{
    error::Failure,
    http::{Api, segment},
    output::{self, Output},
};

/// A title to add.
pub struct TitleFields<'a> {
    pub isbn: &'a str,
    pub title: &'a str,
    pub authors: &'a [String],
    pub year: Option<i32>,
}

pub async fn add_title(api: &Api, out: Output, t: &TitleFields<'_>) -> Result<(), Failure> {
    let mut body = json!({"isbn": t.isbn, "title": t.title, "authors": t.authors});
    if let Some(year) = t.year {
        body["year"] = json!(year);
    }
    let title = api.post("/v1/titles", &body).await?.body;
    if out.json(&title) {
        return Ok(());
    }
    println!(
        "added  {} ({})",
        output::text(&title["title"]),
        output::text(&title["isbn"])
    );
    print_title(&title);
    Ok(())
}

fn print_title(title: &Value) {
    let authors: Vec<String> = title["authors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(output::text)
        .collect();
    output::fields(&[
        ("authors", authors.join(", ")),
        ("year", output::text(&title["year"])),
    ]);
}

pub async fn add_copy(
    api: &Api,
    out: Output,
    isbn: &str,
    branch: &str,
    barcode: Option<&str>,
) -> Result<(), Failure> {
    let mut body = json!({ "branch": branch });
    if let Some(b) = barcode {
        body["barcode"] = json!(b);
    }
    let copy = api
        .post(&format!("/v1/titles/{}/copies", segment(isbn)), &body)
        .await?
        .body;
    if !out.json(&copy) {
        println!(
            "added copy {}  of {} at {}",
            output::text(&copy["barcode"]),
            output::text(&copy["isbn"]),
            output::text(&copy["branch"])
        );
    }
    Ok(())
}

pub async fn withdraw_copy(api: &Api, out: Output, barcode: &str) -> Result<(), Failure> {
    let copy = api
        .json(api.request(Method::DELETE, &format!("/v1/copies/{}", segment(barcode))))
        .await?
        .body;
    if !out.json(&copy) {
        println!(
            "withdrawn copy {}  of {} at {}",
            output::text(&copy["barcode"]),
            output::text(&copy["isbn"]),
            output::text(&copy["branch"])
        );
    }
    Ok(())
}

pub async fn add_patron(
    api: &Api,
    out: Output,
    id: &str,
    name: &str,
    email: Option<&str>,
) -> Result<(), Failure> {
    let mut body = json!({ "id": id, "name": name });
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    let patron = api.post("/v1/patrons", &body).await?.body;
    if !out.json(&patron) {
        println!("added patron {}", output::text(&patron["id"]));
        print_patron(&patron);
    }
    Ok(())
}

/// `PATCH /v1/patrons/{id}` with `change`, then the patron as it is.
pub async fn change_patron(
    api: &Api,
    out: Output,
    id: &str,
    change: Map<String, Value>,
) -> Result<(), Failure> {
    let patron = api
        .json(
            api.request(Method::PATCH, &format!("/v1/patrons/{}", segment(id)))
                .json(&Value::Object(change)),
        )
        .await?
        .body;
    if !out.json(&patron) {
        let state = if patron["blocked"].is_null() {
            "not blocked"
        } else {
            "blocked"
        };
        println!("patron {}  {state}", output::text(&patron["id"]));
        print_patron(&patron);
    }
    Ok(())
}

pub async fn show_patron(api: &Api, out: Output, id: &str) -> Result<(), Failure> {
    let patron = api.get(&format!("/v1/patrons/{}", segment(id))).await?;
    if !out.json(&patron) {
        println!("patron {}", output::text(&patron["id"]));
        print_patron(&patron);
    }
    Ok(())
}

fn print_patron(p: &Value) {
    let blocked = if p["blocked"].is_null() {
        "no".to_owned()
    } else {
        format!(
            "since {}: {}",
            output::day(&p["blocked"]["since"]),
            output::text(&p["blocked"]["reason"])
        )
    };
    output::fields(&[
        ("name", output::text(&p["name"])),
        ("email", output::text(&p["email"])),
        ("blocked", blocked),
    ]);
}

/// One page of patrons; `--all` follows `next_cursor` to the end.
pub async fn list_patrons(
    api: &Api,
    out: Output,
    q: Option<&str>,
    limit: Option<u32>,
    cursor: Option<&str>,
    all: bool,
) -> Result<(), Failure> {
    let mut cursor = cursor.map(str::to_owned);
    let mut rows = Vec::new();
    let mut pages = Vec::new();
    loop {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(q) = q {
            query.push(("q", q.to_owned()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = &cursor {
            query.push(("cursor", c.clone()));
        }
        let page = api
            .json(api.request(Method::GET, "/v1/patrons").query(&query))
            .await?
            .body;
        for p in page["patrons"].as_array().into_iter().flatten() {
            rows.push(vec![
                output::text(&p["id"]),
                output::text(&p["name"]),
                output::text(&p["email"]),
                if p["blocked"].is_null() {
                    "-"
                } else {
                    "blocked"
                }
                .to_owned(),
            ]);
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages.push(page);
        if !all || cursor.is_none() {
            break;
        }
    }
    if out.json {
        // One page as the API answered it; with --all, every patron.
        let answer = match pages.as_slice() {
            [one] => one.clone(),
            many => json!({
                "patrons": many.iter().flat_map(|p| p["patrons"].as_array().cloned().unwrap_or_default()).collect::<Vec<_>>(),
                "next_cursor": Value::Null,
            }),
        };
        out.json(&answer);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no patrons");
    } else {
        output::table(&["ID", "NAME", "EMAIL", "BLOCKED"], &rows);
    }
    if let Some(c) = cursor {
        println!("more: --cursor {c}");
    }
    Ok(())
}
