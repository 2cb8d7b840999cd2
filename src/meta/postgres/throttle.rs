//! The shared login throttle in PostgreSQL: each change is one upsert, so failures counted on
//! two nodes at once are both counted, and the budget's GCRA step is atomic per network.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;

use super::{IsolationLevel, PgResult, Postgres};
use crate::ids::Timestamp;
use crate::meta::error::MetaError;
use crate::meta::throttle::{DelayRule, LoginThrottles, ThrottleRules};

/// One failure more for `(username, network)` under `rule`, forgetting failures older than the
/// window: the delay doubles per failure past the threshold, up to the rule's cap.
async fn bump(
    c: &impl GenericClient,
    username: &str,
    network: &str,
    now: Timestamp,
    rule: DelayRule,
    window_us: i64,
) -> PgResult<()> {
    // The new count, spelled out where it is needed: `n` = the old count plus one, or 1 when
    // the last failure is older than the window.
    let st = c
        .prepare_cached(
            "INSERT INTO login_failures AS f (username, network, failures, last_at, until_at)
             VALUES ($1, $2, 1, $3::BIGINT,
                     CASE WHEN 1 >= $4::INT THEN $3::BIGINT + LEAST(1000000, $5::BIGINT)
                          ELSE $3::BIGINT END)
             ON CONFLICT (username, network) DO UPDATE SET
                 failures = CASE WHEN $3::BIGINT - f.last_at >= $6::BIGINT THEN 1
                                 ELSE f.failures + 1 END,
                 last_at = $3::BIGINT,
                 until_at = CASE
                     WHEN (CASE WHEN $3::BIGINT - f.last_at >= $6::BIGINT THEN 1
                                ELSE f.failures + 1 END) >= $4::INT
                     THEN $3::BIGINT + LEAST((1::BIGINT << LEAST(
                         (CASE WHEN $3::BIGINT - f.last_at >= $6::BIGINT THEN 1
                               ELSE f.failures + 1 END) - $4::INT,
                         20)) * 1000000, $5::BIGINT)
                     ELSE f.until_at END",
        )
        .await?;
    let threshold = i32::try_from(rule.threshold).unwrap_or(i32::MAX);
    c.execute(
        &st,
        &[
            &username,
            &network,
            &now,
            &threshold,
            &rule.max_delay_us,
            &window_us,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl LoginThrottles for Postgres {
    async fn wait_until(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        known_for_us: i64,
    ) -> Result<Option<Timestamp>, MetaError> {
        let args = (username.to_owned(), network.to_owned(), now, known_for_us);
        self.one(args, |c, (user, net, now, known_for)| {
            Box::pin(async move {
                let st = c
                    .prepare_cached(
                        "SELECT max(until_at) FROM login_failures
                         WHERE username = $1 AND until_at > $3
                           AND (network = $2
                                OR (network = '' AND NOT EXISTS (
                                    SELECT 1 FROM login_known
                                    WHERE username = $1 AND network = $2 AND at > $3::BIGINT - $4::BIGINT)))",
                    )
                    .await?;
                let until: Option<i64> = c
                    .query_one(&st, &[user, net, now, known_for])
                    .await?
                    .try_get(0)?;
                Ok(until.map(Timestamp))
            })
        })
        .await
    }

    async fn failed(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        rules: ThrottleRules,
    ) -> Result<(), MetaError> {
        let args = (username.to_owned(), network.to_owned(), now, rules);
        self.tx(
            IsolationLevel::ReadCommitted,
            args,
            |t, (user, net, now, rules)| {
                Box::pin(async move {
                    bump(t, user, net, *now, rules.network, rules.window_us).await?;
                    bump(t, user, "", *now, rules.account, rules.window_us).await
                })
            },
        )
        .await
    }

    async fn succeeded(
        &self,
        username: &str,
        network: &str,
        now: Timestamp,
        rules: ThrottleRules,
    ) -> Result<(), MetaError> {
        let args = (username.to_owned(), network.to_owned(), now, rules);
        self.tx(
            IsolationLevel::ReadCommitted,
            args,
            |t, (user, net, now, rules)| {
                Box::pin(async move {
                    t.execute(
                        "DELETE FROM login_failures WHERE username = $1 AND network = $2",
                        &[user, net],
                    )
                    .await?;
                    t.execute(
                        "INSERT INTO login_known (username, network, at) VALUES ($1, $2, $3)
                         ON CONFLICT (username, network) DO UPDATE SET at = $3",
                        &[user, net, now],
                    )
                    .await?;
                    // The freshest few, none stale.
                    let keep = i64::from(rules.known_per_account);
                    t.execute(
                        "DELETE FROM login_known WHERE username = $1 AND (at <= $2::BIGINT - $3::BIGINT
                             OR network NOT IN (SELECT network FROM login_known
                                                WHERE username = $1
                                                ORDER BY at DESC LIMIT $4::BIGINT))",
                        &[user, now, &rules.known_for_us, &keep],
                    )
                    .await?;
                    Ok(())
                })
            },
        )
        .await
    }

    async fn take_budget(
        &self,
        network: &str,
        now: Timestamp,
        interval_us: i64,
        burst: u32,
    ) -> Result<Option<i64>, MetaError> {
        let tolerance = interval_us.saturating_mul(i64::from(burst));
        let args = (network.to_owned(), now, interval_us, tolerance);
        self.one(args, |c, (net, now, interval, tolerance)| {
            Box::pin(async move {
                // GCRA: the next theoretical arrival moves one interval past max(tat, now);
                // a request conforms while that stays within the burst's tolerance of now.
                let st = c
                    .prepare_cached(
                        "INSERT INTO login_budget AS b (network, tat) VALUES ($1, $2::BIGINT + $3::BIGINT)
                         ON CONFLICT (network) DO UPDATE
                             SET tat = GREATEST(b.tat, $2::BIGINT) + $3::BIGINT
                         WHERE GREATEST(b.tat, $2::BIGINT) + $3::BIGINT - $2::BIGINT
                               <= $4::BIGINT
                         RETURNING tat",
                    )
                    .await?;
                if c.query_opt(&st, &[net, now, interval, tolerance])
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                let st = c
                    .prepare_cached("SELECT tat FROM login_budget WHERE network = $1")
                    .await?;
                let tat: i64 = match c.query_opt(&st, &[net]).await? {
                    Some(r) => r.try_get(0)?,
                    None => return Ok(None),
                };
                let wait = tat.max(now.0) + interval - now.0 - tolerance;
                Ok(Some(wait.max(1)))
            })
        })
        .await
    }

    async fn prune(&self, now: Timestamp, rules: ThrottleRules) -> Result<usize, MetaError> {
        self.tx(IsolationLevel::ReadCommitted, (now, rules), |t, (now, rules)| {
            Box::pin(async move {
                let mut n = t
                    .execute(
                        "DELETE FROM login_failures WHERE until_at <= $1 AND last_at <= $1::BIGINT - $2::BIGINT",
                        &[now, &rules.window_us],
                    )
                    .await?;
                n += t
                    .execute(
                        "DELETE FROM login_known WHERE at <= $1::BIGINT - $2::BIGINT",
                        &[now, &rules.known_for_us],
                    )
                    .await?;
                // A budget whose arrival time has passed is as good as a fresh one.
                n += t
                    .execute("DELETE FROM login_budget WHERE tat <= $1", &[now])
                    .await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
        })
        .await
    }
}
