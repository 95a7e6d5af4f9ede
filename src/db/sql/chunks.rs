//! Chunked upload sessions: a part recorded under the session's lock.

use super::*;

impl SqlStore {
    pub(super) async fn record_chunk_once(
        &self,
        init: &ChunkSession,
        part: &ChunkPart,
        max_open: i64,
        rules: ChunkRules<'_>,
    ) -> Result<Option<ChunkOutcome>, DbError> {
        let select = format!(
            "SELECT {SESSION_COLUMNS} FROM upload_sessions WHERE session_id = $1{}",
            self.lock_suffix()
        );
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let existing = sqlx::query(&select)
            .bind(init.session_id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        let (session, created) = match existing {
            Some(row) => (row_to_session(&row)?, false),
            None => {
                let open: i64 =
                    sqlx::query("SELECT COUNT(*) AS n FROM upload_sessions WHERE cloud = $1")
                        .bind(init.cloud.clone())
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get("n")?;
                if open >= max_open {
                    tx.rollback().await?;
                    return Ok(Some(ChunkOutcome {
                        decision: ChunkDecision::Reject(format!(
                            "Too many chunked uploads in progress for this cloud (maximum {max_open})"
                        )),
                        session: init.clone(),
                        parts: Vec::new(),
                    }));
                }
                let sql = format!(
                    "INSERT INTO upload_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, \
                     $7, $8, $9, $10, $11, $12) ON CONFLICT (session_id) DO NOTHING"
                );
                let done = sqlx::query(&sql)
                    .bind(init.session_id.clone())
                    .bind(init.cloud.clone())
                    .bind(init.upload_id.clone())
                    .bind(init.resource_type.clone())
                    .bind(init.identity.clone())
                    .bind(init.total)
                    .bind(init.public_id.clone())
                    .bind(init.filename.clone())
                    .bind(init.state.clone())
                    .bind(init.state_since)
                    .bind(init.created_at)
                    .bind(init.updated_at)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    // Another request created it first: start over and lock it.
                    tx.rollback().await?;
                    return Ok(None);
                }
                (init.clone(), true)
            }
        };
        let mut parts = load_parts(&mut *tx, &session.session_id).await?;
        let decision = rules(&session, &parts);
        let mut session = session;
        let claim = match &decision {
            ChunkDecision::Reject(_) => {
                if created {
                    tx.rollback().await?;
                } else {
                    tx.commit().await?;
                }
                return Ok(Some(ChunkOutcome {
                    decision,
                    session,
                    parts,
                }));
            }
            ChunkDecision::Accept { total, claim } => {
                sqlx::query(
                    "INSERT INTO upload_parts (session_id, start_at, end_at, md5, file) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (session_id, start_at, end_at) DO NOTHING",
                )
                .bind(session.session_id.clone())
                .bind(part.start)
                .bind(part.end)
                .bind(part.md5.clone())
                .bind(part.file.clone())
                .execute(&mut *tx)
                .await?;
                if total.is_some() {
                    session.total = *total;
                }
                parts = load_parts(&mut *tx, &session.session_id).await?;
                *claim
            }
            ChunkDecision::Duplicate { claim } => *claim,
        };
        session.updated_at = init.updated_at;
        if claim {
            session.state = "assembling".into();
            session.state_since = init.updated_at;
        }
        sqlx::query(
            "UPDATE upload_sessions SET total = $1, updated_at = $2, state = $3, state_since = $4 \
             WHERE session_id = $5",
        )
        .bind(session.total)
        .bind(session.updated_at)
        .bind(session.state.clone())
        .bind(session.state_since)
        .bind(session.session_id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(ChunkOutcome {
            decision,
            session,
            parts,
        }))
    }
}
