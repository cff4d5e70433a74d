-- The seed's database for the demo (run while connected to "postgres").
CREATE DATABASE demo_db;
