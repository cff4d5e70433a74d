-- The demo's database (run while connected to "postgres").
CREATE DATABASE demo_db;
