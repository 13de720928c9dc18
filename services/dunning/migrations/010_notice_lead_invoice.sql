-- The notice's most advanced invoice: its NotificationRequested and DunningStepExecuted are
-- built by PostgreSQL from the notice row.
ALTER TABLE notices ADD COLUMN lead_invoice uuid;
