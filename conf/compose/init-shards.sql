-- Four metadata shard databases on one PostgreSQL server (the first is also the catalog).
CREATE DATABASE strata0;
CREATE DATABASE strata1;
CREATE DATABASE strata2;
CREATE DATABASE strata3;
