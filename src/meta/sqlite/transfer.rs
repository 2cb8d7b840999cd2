//! Whole rows in and out of SQLite, for `coffer migrate` ([`crate::meta::transfer`]).

use async_trait::async_trait;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ErrorCode, ToSql, params_from_iter};

use super::Sqlite;
use crate::meta::error::MetaError;
use crate::meta::transfer::{Cell, Imported, Kind, Row, Table, Transfer};

impl ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Cell::Null => ToSqlOutput::Owned(Value::Null),
            Cell::Int(v) => ToSqlOutput::Owned(Value::Integer(*v)),
            Cell::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
        })
    }
}

fn cell(row: &rusqlite::Row<'_>, i: usize, kind: Kind) -> rusqlite::Result<Cell> {
    Ok(match kind {
        Kind::Uuid | Kind::Text => row.get::<_, Option<String>>(i)?.map(Cell::Text),
        Kind::Int => row.get::<_, Option<i64>>(i)?.map(Cell::Int),
        Kind::Bytes => row.get::<_, Option<Vec<u8>>>(i)?.map(Cell::Bytes),
    }
    .unwrap_or(Cell::Null))
}

fn column_list(t: &Table) -> String {
    t.columns.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
}

/// The columns as exported ([`Table::exported`]).
fn exported_list(t: &Table) -> String {
    t.columns
        .iter()
        .map(|c| t.exported(c.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Rows after `after`, in key order.
pub fn export(
    c: &Connection,
    t: &Table,
    after: Option<&Cell>,
    limit: usize,
) -> rusqlite::Result<Vec<Row>> {
    let (name, key, cols) = (t.name, t.key(), exported_list(t));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = match after {
        Some(_) => format!("SELECT {cols} FROM {name} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2"),
        None => format!("SELECT {cols} FROM {name} ORDER BY {key} LIMIT ?2"),
    };
    let mut st = c.prepare_cached(&sql)?;
    let read = |r: &rusqlite::Row<'_>| {
        t.columns
            .iter()
            .enumerate()
            .map(|(i, col)| cell(r, i, col.1))
            .collect::<rusqlite::Result<Row>>()
    };
    match after {
        Some(a) => st.query_map(rusqlite::params![a, limit], read)?.collect(),
        None => {
            // ?1 unused: bind it anyway so both shapes take the same parameters.
            st.query_map(rusqlite::params![Cell::Null, limit], read)?
                .collect()
        }
    }
}

/// Upsert `rows`; rows whose parent is missing are left out and counted.
pub fn import(c: &Connection, t: &Table, rows: &[Row]) -> rusqlite::Result<Imported> {
    let (name, key, cols) = (t.name, t.key(), column_list(t));
    let marks = (1..=t.columns.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let set = t
        .columns
        .get(1..)
        .unwrap_or_default()
        .iter()
        .map(|(c, _)| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO {name} ({cols}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {set}"
    );
    let mut st = c.prepare_cached(&sql)?;
    let mut done = Imported::default();
    for row in rows {
        match st.execute(params_from_iter(row.iter())) {
            Ok(_) => done.written += 1,
            // A failed statement is undone alone; the transaction goes on.
            Err(e) if is_foreign_key(&e) => done.dangling += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn is_foreign_key(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.code == ErrorCode::ConstraintViolation
                && f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
    )
}

/// Of `keys`, those with a row.
pub fn present(c: &Connection, t: &Table, keys: &[Cell]) -> rusqlite::Result<Vec<Cell>> {
    let sql = format!("SELECT 1 FROM {} WHERE {} = ?1", t.name, t.key());
    let mut st = c.prepare_cached(&sql)?;
    let mut out = Vec::new();
    for k in keys {
        if st.exists([k])? {
            out.push(k.clone());
        }
    }
    Ok(out)
}

/// Delete the rows with these keys.
pub fn remove(c: &Connection, t: &Table, keys: &[Cell]) -> rusqlite::Result<()> {
    let sql = format!("DELETE FROM {} WHERE {} = ?1", t.name, t.key());
    let mut st = c.prepare_cached(&sql)?;
    for k in keys {
        st.execute([k])?;
    }
    Ok(())
}

/// Every user's `used_bytes` from their files.
pub fn recount_usage(c: &Connection) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE users SET used_bytes =
            (SELECT COALESCE(SUM(size), 0) FROM files WHERE owner_id = users.id)",
        [],
    )?;
    Ok(())
}

#[async_trait]
impl Transfer for Sqlite {
    async fn export_rows(
        &self,
        table: &'static Table,
        after: Option<Cell>,
        limit: usize,
    ) -> Result<Vec<Row>, MetaError> {
        self.read(move |c| export(c, table, after.as_ref(), limit))
            .await
    }

    async fn import_rows(
        &self,
        table: &'static Table,
        rows: Vec<Row>,
    ) -> Result<Imported, MetaError> {
        self.write(move |c| import(c, table, &rows)).await
    }

    async fn present_keys(
        &self,
        table: &'static Table,
        keys: Vec<Cell>,
    ) -> Result<Vec<Cell>, MetaError> {
        self.read(move |c| present(c, table, &keys)).await
    }

    async fn remove_rows(&self, table: &'static Table, keys: Vec<Cell>) -> Result<(), MetaError> {
        self.write(move |c| remove(c, table, &keys)).await
    }

    async fn recount_usage(&self) -> Result<(), MetaError> {
        self.write(recount_usage).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::transfer::{LEFT_OUT, TABLES};

    /// Every column of the schema is copied or left out on purpose: a migration that adds a
    /// table or a column must say which (a column forgotten here is lost by `coffer migrate`).
    #[test]
    fn every_column_of_the_schema_is_copied_or_left_out_on_purpose() {
        let c = super::super::test_conn();
        let mut tables = c
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap();
        let tables: Vec<String> = tables
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(tables.len() >= TABLES.len());
        for table in tables {
            if LEFT_OUT.contains(&table.as_str()) {
                continue;
            }
            let copied = TABLES
                .iter()
                .find(|t| t.name == table)
                .unwrap_or_else(|| panic!("table {table} is neither copied nor in LEFT_OUT"));
            let mut cols = c
                .prepare("SELECT name FROM pragma_table_xinfo(?1)")
                .unwrap();
            let cols: Vec<String> = cols
                .query_map([&table], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for col in cols {
                let listed = copied.columns.iter().any(|(name, _)| *name == col);
                let left_out = LEFT_OUT.contains(&format!("{table}.{col}").as_str());
                assert!(
                    listed != left_out,
                    "{table}.{col}: copied {listed}, left out {left_out} (exactly one must hold)"
                );
            }
        }
    }

    #[test]
    fn rows_round_trip_and_upsert_and_dangling_children_are_counted() {
        let c = super::super::test_conn();
        let users = &TABLES[0];
        let sessions = &TABLES[1];
        let user = |id: &str, name: &str| {
            vec![
                Cell::Text(id.into()),
                Cell::Text(name.into()),
                Cell::Text(format!("{name}@example.com")),
                Cell::Text("!locked".into()),
                Cell::Text("user".into()),
                Cell::Int(1),
                Cell::Int(0),
            ]
        };
        let a = "00000000-0000-4000-8000-000000000001";
        let b = "00000000-0000-4000-8000-000000000002";
        let got = import(&c, users, &[user(a, "alice"), user(b, "bob")]).unwrap();
        assert_eq!(got.written, 2);
        // Same key again: replaced, not duplicated.
        import(&c, users, &[user(a, "alice2")]).unwrap();
        let rows = export(&c, users, None, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1], Cell::Text("alice2".into()));
        let after = export(&c, users, Some(&Cell::Text(a.into())), 10).unwrap();
        assert_eq!(after, vec![user(b, "bob")]);

        let session = |id: &str, user: &str| {
            vec![
                Cell::Text(id.into()),
                Cell::Text(user.into()),
                Cell::Int(1),
                Cell::Int(2),
                Cell::Null,
            ]
        };
        let orphan = "00000000-0000-4000-8000-00000000000f";
        let got = import(&c, sessions, &[session(a, a), session(b, orphan)]).unwrap();
        assert_eq!(
            got,
            Imported {
                written: 1,
                dangling: 1
            }
        );
        let keys = vec![Cell::Text(a.into()), Cell::Text(b.into())];
        assert_eq!(present(&c, users, &keys).unwrap().len(), 2);
        remove(&c, sessions, &keys[..1]).unwrap();
        remove(&c, users, &keys[1..]).unwrap();
        assert_eq!(present(&c, users, &keys).unwrap(), keys[..1].to_vec());
    }
}
