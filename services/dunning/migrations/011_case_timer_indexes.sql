-- A case's timer is the earliest due step of its OPEN items: those are found by case, never by a
-- scan of the tenant. Without statistics (a young database, a burst of invoices) the planner
-- otherwise took the open-items-by-customer index with the tenant alone as its condition.
CREATE INDEX case_items_open_by_case ON case_items (tenant_id, case_id) WHERE status = 'open';
-- Disputes pause their customer's invoices while open and, when accepted, until the credit
-- note arrives: looked up by customer in both states.
CREATE INDEX disputes_by_customer ON disputes (tenant_id, customer_id);
