# Latency-percentile plot of the seed scenario (scripts/bench.sh, via bench/report.py).
# Called as: gnuplot -e "out='FILE.svg'; ttl='TITLE'" seed-latency.gp -e "plot ..."
# Each data file holds "x latency_ms" rows, x = 1/(1-percentile), so that each extra nine
# of percentile gets the same width; the last point of each series is its slowest request.
set terminal svg size 900,540 dynamic enhanced font "sans,12" background "#ffffff"
set output out
set title ttl noenhanced
set xlabel "percentile"
set ylabel "latency (ms)"
set logscale x 10
set logscale y 10
set xrange [1:*]
set xtics ("0%%" 1, "50%%" 2, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000)
set grid xtics ytics mytics lc rgb "#dddddd"
set key top left box opaque
set style line 1 lc rgb "#1b6ca8" lw 2 pt 7 ps 0.6
set style line 2 lc rgb "#d1495b" lw 2 pt 7 ps 0.6
set style line 3 lc rgb "#2e933c" lw 2 pt 7 ps 0.6
# nginx: the same colours, dashed, hollow points
set style line 4 lc rgb "#1b6ca8" lw 1.5 pt 6 ps 0.6 dt 2
set style line 5 lc rgb "#d1495b" lw 1.5 pt 6 ps 0.6 dt 2
set style line 6 lc rgb "#2e933c" lw 1.5 pt 6 ps 0.6 dt 2

# The plot command itself is appended by report.py (one curve per server and route:
# colour = route, solid = fibd, dashed = nginx), as gnuplot -e "..." after this file.
