ALTER TABLE customers ADD COLUMN credit_terms_days int CHECK (credit_terms_days BETWEEN 0 AND 365);
