-- The sample catalog the demo and the system tests order from. Fixed ids so
-- the README's demo can name them.
INSERT INTO products (id, sku, name, price_cents, currency, stock) VALUES
    ('0193a4c0-0000-7000-8000-000000000001', 'SIG-LAMP',   'Signal lamp',        4900, 'EUR', 100),
    ('0193a4c0-0000-7000-8000-000000000002', 'SIG-LEVER',  'Lever frame',       12900, 'EUR',  25),
    ('0193a4c0-0000-7000-8000-000000000003', 'SIG-BELL',   'Block bell',         2900, 'EUR',  50),
    ('0193a4c0-0000-7000-8000-000000000004', 'SIG-TABLET', 'Single-line tablet', 1900, 'EUR',  10),
    ('0193a4c0-0000-7000-8000-000000000005', 'SIG-FLAG',   'Hand flag',           900, 'EUR',   3);
