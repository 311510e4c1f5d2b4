//! The quarterly access review (issue #19): `report access --from --to --format csv|md|json`.
//!
//! Three sections, as an auditor reads them: per user and target, what was asked for and why,
//! who approved, how long access lasted, what was done with it (sessions, commands,
//! statements) and what was refused; per approver, what they approved; and the grants still
//! standing at the end of the period. The CSV is one long table with a `section` column so
//! one file holds all three; cells a spreadsheet would run as a formula are quoted with `'`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::clock::rfc3339;
use crate::store::ReportData;

/// The formats `report access` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Csv,
    Md,
    Json,
}

/// One row of the report; which fields are set depends on the section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub section: Section,
    pub user: String,
    pub target: String,
    pub approver: String,
    pub requests: u64,
    pub approved: u64,
    pub denied: u64,
    /// Expired, cancelled or still pending.
    pub other: u64,
    pub reasons: Vec<String>,
    pub approvers: Vec<String>,
    pub granted_seconds: u64,
    pub sessions: u64,
    pub commands: u64,
    pub statements: u64,
    pub refusals: u64,
    pub grant: String,
    pub ends_at: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    #[default]
    Access,
    Approver,
    Standing,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Access => "access",
            Section::Approver => "approver",
            Section::Standing => "standing",
        }
    }
}

const COLUMNS: [&str; 17] = [
    "section",
    "user",
    "target",
    "approver",
    "requests",
    "approved",
    "denied",
    "other",
    "reasons",
    "approvers",
    "granted_seconds",
    "sessions",
    "commands",
    "statements",
    "refusals",
    "grant",
    "ends_at",
];

/// The report's rows from the period's data and each session's command count.
pub fn rows(data: &ReportData, commands: &HashMap<String, u64>) -> Vec<Row> {
    let mut access: BTreeMap<(String, String), Row> = BTreeMap::new();
    let mut approvals: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for request in &data.requests {
        let row = access_row(&mut access, &request.requester, &request.target);
        row.requests += 1;
        match request.state.as_str() {
            "approved" => row.approved += 1,
            "denied" => row.denied += 1,
            _ => row.other += 1,
        }
        row.reasons.push(request.reason.clone());
        row.granted_seconds += request.granted_seconds.unwrap_or(0);
        for approver in &request.approvers {
            if !row.approvers.contains(approver) {
                row.approvers.push(approver.clone());
            }
            let key = (
                approver.clone(),
                request.requester.clone(),
                request.target.clone(),
            );
            *approvals.entry(key).or_default() += 1;
        }
    }
    for (id, user, target, statements) in &data.sessions {
        let row = access_row(&mut access, user, target);
        row.sessions += 1;
        row.statements += statements;
        row.commands += commands.get(id).copied().unwrap_or(0);
    }
    for (user, target, _) in &data.refusals {
        access_row(&mut access, user, target).refusals += 1;
    }
    let mut rows: Vec<Row> = access.into_values().collect();
    rows.extend(
        approvals
            .into_iter()
            .map(|((approver, user, target), approved)| Row {
                section: Section::Approver,
                user,
                target,
                approver,
                approved,
                ..Row::default()
            }),
    );
    let mut standing: Vec<Row> = data
        .standing
        .iter()
        .map(|(grant, approvers)| Row {
            section: Section::Standing,
            user: grant.user.clone(),
            target: grant.target.clone(),
            approvers: approvers.clone(),
            grant: grant.id.clone(),
            ends_at: rfc3339(grant.ends_at),
            ..Row::default()
        })
        .collect();
    standing.sort_by(|a, b| (&a.user, &a.target, &a.grant).cmp(&(&b.user, &b.target, &b.grant)));
    rows.extend(standing);
    rows
}

fn access_row<'a>(
    access: &'a mut BTreeMap<(String, String), Row>,
    user: &str,
    target: &str,
) -> &'a mut Row {
    access
        .entry((user.to_string(), target.to_string()))
        .or_insert_with(|| Row {
            section: Section::Access,
            user: user.to_string(),
            target: target.to_string(),
            ..Row::default()
        })
}

/// The sessions whose commands the report counts.
pub fn session_ids(data: &ReportData) -> BTreeSet<String> {
    data.sessions.iter().map(|(id, ..)| id.clone()).collect()
}

fn cells(row: &Row) -> [String; 17] {
    let number = |value: u64, section: Section| {
        if row.section == section {
            value.to_string()
        } else {
            String::new()
        }
    };
    let access = Section::Access;
    [
        row.section.as_str().to_string(),
        row.user.clone(),
        row.target.clone(),
        row.approver.clone(),
        number(row.requests, access),
        if row.section == Section::Standing {
            String::new()
        } else {
            row.approved.to_string()
        },
        number(row.denied, access),
        number(row.other, access),
        row.reasons.join(" | "),
        row.approvers.join(" "),
        number(row.granted_seconds, access),
        number(row.sessions, access),
        number(row.commands, access),
        number(row.statements, access),
        number(row.refusals, access),
        row.grant.clone(),
        row.ends_at.clone(),
    ]
}

/// RFC 4180 CSV, one table; text a spreadsheet would take for a formula starts with `'`.
pub fn csv(rows: &[Row]) -> String {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = cells(row).iter().map(|cell| csv_cell(cell)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

fn csv_cell(cell: &str) -> String {
    let cell = match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}"),
        _ => cell.to_string(),
    };
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell
    }
}

/// Markdown: a heading and a table per section; cells escaped so text cannot break a table.
pub fn markdown(rows: &[Row], from: OffsetDateTime, to: OffsetDateTime) -> String {
    let mut out = format!("# Access review, {} to {}\n", rfc3339(from), rfc3339(to));
    for (section, title, columns) in [
        (
            Section::Access,
            "Access by user and target",
            &[1usize, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14][..],
        ),
        (
            Section::Approver,
            "Approvals by approver",
            &[3, 1, 2, 5][..],
        ),
        (
            Section::Standing,
            "Grants standing at the end of the period",
            &[1, 2, 15, 16, 9][..],
        ),
    ] {
        out.push_str(&format!("\n## {title}\n\n"));
        let chosen: Vec<&Row> = rows.iter().filter(|row| row.section == section).collect();
        if chosen.is_empty() {
            out.push_str("None.\n");
            continue;
        }
        let header: Vec<&str> = columns.iter().map(|index| COLUMNS[*index]).collect();
        out.push_str(&format!("| {} |\n", header.join(" | ")));
        out.push_str(&format!("|{}\n", " --- |".repeat(columns.len())));
        for row in chosen {
            let all = cells(row);
            let shown: Vec<String> = columns.iter().map(|index| md_cell(&all[*index])).collect();
            out.push_str(&format!("| {} |\n", shown.join(" | ")));
        }
    }
    out
}

fn md_cell(cell: &str) -> String {
    let mut out = String::with_capacity(cell.len());
    for character in crate::text::visible(cell).chars() {
        if matches!(
            character,
            '|' | '\\' | '`' | '*' | '_' | '<' | '>' | '[' | ']'
        ) {
            out.push('\\');
        }
        out.push(character);
    }
    out
}

pub fn json(rows: &[Row], from: OffsetDateTime, to: OffsetDateTime) -> Value {
    let section = |wanted: Section| -> Vec<Value> {
        rows.iter()
            .filter(|row| row.section == wanted)
            .map(|row| {
                let all = cells(row);
                let mut object = serde_json::Map::new();
                for (index, name) in COLUMNS.iter().enumerate().skip(1) {
                    if all[index].is_empty() {
                        continue;
                    }
                    let value = match *name {
                        "reasons" => json!(row.reasons),
                        "approvers" => json!(row.approvers),
                        _ => match all[index].parse::<u64>() {
                            Ok(number) if *name != "user" && *name != "target" => json!(number),
                            _ => json!(all[index]),
                        },
                    };
                    object.insert(name.to_string(), value);
                }
                Value::Object(object)
            })
            .collect()
    };
    json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "access": section(Section::Access),
        "approvers": section(Section::Approver),
        "standing": section(Section::Standing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_become_formulas_or_break_a_row() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(md_cell("a | b\n"), "a \\| b\\\\n");
    }
}
