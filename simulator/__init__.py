"""Discrete-event simulation of a whole cluster with Pavana's own policies and profiled costs."""
