//! Library commands: loan, renew, return, follow an operation, and the
//! catalogue look-ups (book, search, a patron's loans, branches), plus the
//! API's readiness.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::{
    error::Failure,
    follow::poll,
    http::{Answer, Api, segment},
    output::{self, Output},
};

/// What a loan is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Book {
    Isbn(String),
    Title(String),
}

pub async fn loan_raw(
    api: &Api,
    book: &Book,
    patron: &str,
    branch: &str,
    idempotency_key: Option<&str>,
) -> Result<Answer, Failure> {
    let mut body = json!({ "patron": patron, "branch": branch });
    match book {
        Book::Isbn(isbn) => body["isbn"] = json!(isbn),
        Book::Title(title) => body["title"] = json!(title),
    }
    let mut req = api.request(Method::POST, "/v1/loans").json(&body);
    if let Some(key) = idempotency_key {
        req = req.header("idempotency-key", key);
    }
    api.json(req).await
}

/// A renewal or a return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Circulation {
    Renewal,
    Return,
}

impl Circulation {
    fn path(self) -> &'static str {
        match self {
            Self::Renewal => "/v1/renewals",
            Self::Return => "/v1/returns",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            Self::Renewal => "renewal",
            Self::Return => "return",
        }
    }
}

/// Which loan a renewal or return is about.
#[derive(Debug, Clone, Default)]
pub struct LoanRef {
    pub isbn: Option<String>,
    pub patron: Option<String>,
    pub loan_id: Option<String>,
}

/// Asks for a renewal or return; the answer is the accepted operation.
pub async fn circulate_raw(
    api: &Api,
    kind: Circulation,
    loan: &LoanRef,
    branch: &str,
) -> Result<Value, Failure> {
    let mut body = Map::new();
    for (name, value) in [
        ("isbn", &loan.isbn),
        ("patron", &loan.patron),
        ("loan_id", &loan.loan_id),
    ] {
        if let Some(v) = value {
            body.insert(name.to_owned(), json!(v));
        }
    }
    body.insert("branch".to_owned(), json!(branch));
    Ok(api.post(kind.path(), &Value::Object(body)).await?.body)
}

/// Follows an operation until it is applied; a rejection or a wait that
/// ran out is a [`Failure::Unsuccessful`] carrying the last state seen.
pub async fn wait_operation(api: &Api, id: &str, timeout: Duration) -> Result<Value, Failure> {
    let path = format!("/v1/operations/{}", segment(id));
    let op = match poll(timeout, || async {
        let op = api.get(&path).await?;
        Ok((op["state"] != "pending", op))
    })
    .await?
    {
        Ok(op) => op,
        Err(last) => {
            return Err(Failure::Unsuccessful {
                code: "wait_timeout".into(),
                message: format!(
                    "operation {id} is still pending after {:.0} s",
                    timeout.as_secs_f64()
                ),
                body: last,
            });
        }
    };
    if op["state"] == "applied" {
        return Ok(op);
    }
    let kind = output::text(&op["kind"]);
    let message = op["outcome"]["message"]
        .as_str()
        .unwrap_or("no reason given")
        .to_owned();
    Err(Failure::Unsuccessful {
        code: op["reason"].as_str().unwrap_or("rejected").to_owned(),
        message: format!("{kind} rejected: {message}"),
        body: op,
    })
}

pub async fn loan(
    api: &Api,
    out: Output,
    book: &Book,
    patron: &str,
    branch: &str,
    idempotency_key: Option<&str>,
) -> Result<(), Failure> {
    let answer = loan_raw(api, book, patron, branch, idempotency_key).await?;
    let body = answer.body;
    if out.json(&body) {
        return Ok(());
    }
    let loan = &body["loan"];
    if body["replayed"] == true {
        println!("already lent for this idempotency key (replayed):");
    }
    println!(
        "lent  {} ({})",
        output::text(&loan["title"]),
        output::text(&loan["isbn"])
    );
    output::fields(&[
        ("loan", output::text(&loan["id"])),
        ("patron", output::text(&loan["patron"])),
        (
            "copy",
            format!(
                "{} at {}",
                output::text(&loan["copy"]),
                output::text(&loan["branch"])
            ),
        ),
        ("due", output::day(&loan["due_at"])),
        (
            "key",
            format!(
                "{}  (the same --idempotency-key gets this loan back)",
                output::text(&body["idempotency_key"])
            ),
        ),
    ]);
    Ok(())
}

pub async fn circulate(
    api: &Api,
    out: Output,
    kind: Circulation,
    loan: &LoanRef,
    branch: &str,
    wait_for: Option<Duration>,
) -> Result<(), Failure> {
    let accepted = circulate_raw(api, kind, loan, branch).await?;
    let id = output::text(&accepted["operation_id"]);
    let Some(timeout) = wait_for else {
        if !out.json(&accepted) {
            println!("{} accepted  operation {id}  (pending)", kind.noun());
            let mut rows = vec![("loan", output::text(&accepted["loan_id"]))];
            if !accepted["tentative_due_at"].is_null() {
                rows.push(("due if applied", output::day(&accepted["tentative_due_at"])));
            }
            rows.push(("follow", format!("bibliomq operation {id} --wait")));
            output::fields(&rows);
        }
        return Ok(());
    };
    let op = wait_operation(api, &id, timeout).await?;
    if !out.json(&op) {
        print_applied(&op);
    }
    Ok(())
}

fn print_applied(op: &Value) {
    let o = &op["outcome"];
    let id = output::text(&op["id"]);
    match op["kind"].as_str() {
        Some("renewal") => {
            println!("renewed  operation {id}");
            output::fields(&[
                ("loan", output::text(&o["loan_id"])),
                (
                    "due",
                    format!(
                        "{} (was {})",
                        output::day(&o["due_at"]),
                        output::day(&o["previous_due_at"])
                    ),
                ),
                ("renewals", output::text(&o["renewals"])),
            ]);
        }
        Some("return") => {
            println!("returned  operation {id}");
            output::fields(&[
                ("loan", output::text(&o["loan_id"])),
                ("copy", output::text(&o["copy"])),
                ("returned", output::when(&o["returned_at"])),
                (
                    "was due",
                    format!(
                        "{}{}",
                        output::day(&o["was_due_at"]),
                        if o["overdue"] == true {
                            " (overdue)"
                        } else {
                            ""
                        }
                    ),
                ),
            ]);
        }
        _ => println!("{} applied  operation {id}", output::text(&op["kind"])),
    }
}

pub async fn operation(
    api: &Api,
    out: Output,
    id: &str,
    wait_for: Option<Duration>,
) -> Result<(), Failure> {
    let op = match wait_for {
        Some(timeout) => wait_operation(api, id, timeout).await?,
        None => api.get(&format!("/v1/operations/{}", segment(id))).await?,
    };
    if out.json(&op) {
        return Ok(());
    }
    println!(
        "{} {}  operation {}",
        output::text(&op["kind"]),
        output::text(&op["state"]),
        output::text(&op["id"])
    );
    let mut rows = vec![
        ("loan", output::text(&op["loan_id"])),
        ("isbn", output::text(&op["isbn"])),
        ("patron", output::text(&op["patron"])),
        ("branch", output::text(&op["branch"])),
        ("requested", output::when(&op["requested_at"])),
        ("settled", output::when(&op["settled_at"])),
    ];
    if !op["reason"].is_null() {
        rows.push(("reason", output::text(&op["reason"])));
    }
    if !op["outcome"].is_null() {
        rows.push(("outcome", output::short_json(&op["outcome"], 300)));
    }
    output::fields(&rows);
    Ok(())
}

pub async fn book(api: &Api, out: Output, isbn: &str) -> Result<(), Failure> {
    let book = api.get(&format!("/v1/books/{}", segment(isbn))).await?;
    if out.json(&book) {
        return Ok(());
    }
    println!("{}", output::text(&book["title"]));
    output::fields(&[
        ("isbn", output::text(&book["isbn"])),
        ("authors", join(&book["authors"])),
        ("year", output::text(&book["published_year"])),
    ]);
    println!();
    let rows: Vec<Vec<String>> = each(&book["branches"])
        .map(|b| {
            vec![
                output::text(&b["branch"]),
                output::text(&b["total"]),
                output::text(&b["available"]),
                output::day(&b["next_due_at"]),
            ]
        })
        .collect();
    output::table(&["BRANCH", "COPIES", "AVAILABLE", "NEXT DUE BACK"], &rows);
    println!();
    let rows: Vec<Vec<String>> = each(&book["copies"])
        .map(|c| {
            vec![
                output::text(&c["barcode"]),
                output::text(&c["branch"]),
                output::text(&c["status"]),
                output::day(&c["due_at"]),
            ]
        })
        .collect();
    output::table(&["COPY", "BRANCH", "STATUS", "DUE"], &rows);
    Ok(())
}

pub async fn search(
    api: &Api,
    out: Output,
    words: &[String],
    limit: Option<u32>,
) -> Result<(), Failure> {
    let mut query = vec![("title", words.join(" "))];
    if let Some(l) = limit {
        query.push(("limit", l.to_string()));
    }
    let found = api
        .json(api.request(Method::GET, "/v1/books").query(&query))
        .await?
        .body;
    if out.json(&found) {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = each(&found["books"])
        .map(|b| {
            vec![
                output::text(&b["isbn"]),
                output::text(&b["title"]),
                join(&b["authors"]),
                format!(
                    "{}/{}",
                    output::text(&b["available_copies"]),
                    output::text(&b["total_copies"])
                ),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no title matches `{}`", words.join(" "));
        return Ok(());
    }
    output::table(&["ISBN", "TITLE", "AUTHORS", "AVAILABLE"], &rows);
    Ok(())
}

pub async fn loans(api: &Api, out: Output, patron: &str, all: bool) -> Result<(), Failure> {
    let mut req = api.request(
        Method::GET,
        &format!("/v1/patrons/{}/loans", segment(patron)),
    );
    if all {
        req = req.query(&[("all", "true")]);
    }
    let loans = api.json(req).await?.body;
    if out.json(&loans) {
        return Ok(());
    }
    let open = each(&loans["loans"])
        .filter(|l| l["returned_at"].is_null())
        .count();
    println!(
        "{} ({}): {open} open loan{} of {} allowed",
        output::text(&loans["patron"]),
        output::text(&loans["name"]),
        if open == 1 { "" } else { "s" },
        output::text(&loans["max_loans"])
    );
    let rows: Vec<Vec<String>> = each(&loans["loans"])
        .map(|l| {
            let mut due = output::day(&l["due_at"]);
            if l["overdue"] == true {
                due.push_str(" OVERDUE");
            }
            vec![
                output::text(&l["id"]),
                output::text(&l["isbn"]),
                output::short_json(&l["title"], 40),
                output::text(&l["branch"]),
                due,
                output::text(&l["renewals"]),
                output::day(&l["returned_at"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        output::table(
            &[
                "LOAN", "ISBN", "TITLE", "BRANCH", "DUE", "RENEWALS", "RETURNED",
            ],
            &rows,
        );
    }
    Ok(())
}

pub async fn branches(api: &Api, out: Output) -> Result<(), Failure> {
    let list = api.get("/v1/branches").await?;
    if out.json(&list) {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = each(&list["branches"])
        .map(|b| vec![output::text(&b["code"]), output::text(&b["name"])])
        .collect();
    output::table(&["CODE", "NAME"], &rows);
    Ok(())
}

/// `/readyz`, whose 503 answer is a report rather than an error.
pub async fn status(api: &Api, out: Output) -> Result<(), Failure> {
    let response = api
        .request(Method::GET, "/readyz")
        .send()
        .await
        .map_err(|e| api.transport(&e))?;
    let code = response.status();
    let body: Value = response.json().await.map_err(|e| api.transport(&e))?;
    let ready = code.is_success();
    if !out.json(&body) {
        let checks: Vec<String> = body["checks"]
            .as_object()
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k} {}", output::text(v)))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{}  {}  ({})",
            if ready { "ready" } else { "unready" },
            api.base(),
            checks.join(", ")
        );
    }
    if ready {
        Ok(())
    } else {
        // Already said, on stdout either way; a dependency down is the
        // server side's trouble.
        Err(Failure::Reported(crate::error::exit::SERVER))
    }
}

fn each(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}

fn join(v: &Value) -> String {
    let items: Vec<String> = each(v).map(output::text).collect();
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
