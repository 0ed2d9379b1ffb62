"""`make bench`: benchmarks against real peers, in labs. They report; they never assert."""
