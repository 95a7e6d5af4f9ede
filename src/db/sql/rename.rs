//! Moving an asset to another key, replacing what is there when asked.

use super::*;

impl SqlStore {
    pub(super) async fn rename_once(
        &self,
        from: &AssetKey,
        to: &AssetKey,
        overwrite: bool,
    ) -> Result<RenameOutcome, DbError> {
        let mut writer = self.writer().await?;
        let mut tx = writer.begin().await?;
        let Some(mut record) = self.fetch_asset(&mut tx, from, true).await? else {
            tx.commit().await?;
            return Ok(RenameOutcome::NotFound);
        };
        let asset_id = record.asset_id.clone();
        let (mut replaced_blob, mut replaced_derived) = (None, Vec::new());
        if from != to {
            if let Some(target) = self.fetch_asset(&mut tx, to, true).await? {
                if !overwrite {
                    tx.commit().await?;
                    return Ok(RenameOutcome::TargetExists);
                }
                let target_id = target.asset_id;
                replaced_blob = Some(target.blob_key);
                replaced_derived = delete_derived_of(&mut tx, &target_id).await?;
                for sql in [
                    "DELETE FROM asset_tags WHERE asset_id = $1",
                    "DELETE FROM assets WHERE asset_id = $1",
                ] {
                    sqlx::query(sql)
                        .bind(target_id.clone())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            sqlx::query("UPDATE assets SET public_id = $1, delivery_type = $2, display_name = $3 WHERE asset_id = $4")
                .bind(to.public_id.clone())
                .bind(to.delivery_type.clone())
                .bind(to.public_id.rsplit('/').next().unwrap_or(&to.public_id).to_string())
                .bind(asset_id)
                .execute(&mut *tx)
                .await?;
            record.key = to.clone();
            record.display_name = to
                .public_id
                .rsplit('/')
                .next()
                .unwrap_or(&to.public_id)
                .to_string();
        }
        tx.commit().await?;
        Ok(RenameOutcome::Renamed {
            record: Box::new(record),
            replaced_blob,
            replaced_derived,
        })
    }
}
