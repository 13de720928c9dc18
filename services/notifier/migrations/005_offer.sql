-- A settlement offer a notice makes (currency, pay_minor, discount_minor, pay_by); NULL: none.
ALTER TABLE notifications ADD COLUMN offer jsonb;
