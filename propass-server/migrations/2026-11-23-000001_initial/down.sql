DROP TABLE copies;
DROP TABLE quotas;
DROP TABLE clients;
DROP TABLE devices;
DROP TABLE users;
