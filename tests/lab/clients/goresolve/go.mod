module goresolve

go 1.19
